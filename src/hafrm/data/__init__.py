"""Data: the preference-pair record, the built-in task, file readers, tokenisation."""
