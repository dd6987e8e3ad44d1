"""What training minimises: the losses and the HaF objective that combines them."""
