import pytest
import torch

from hafrm.modeling.batching import eval_mode, length_batches


def test_batches_run_shortest_first_with_ties_in_input_order():
    assert length_batches([5, 2, 9, 2, 7], batch_size=2) == [[1, 3], [0, 4], [2]]


def test_padded_token_budget_counts_rows_times_the_longest():
    # lengths sorted: 2, 3, 4, 6. [2, 3] pads to 2 x 3 = 6 <= 8; adding 4 would pad to 3 x 4 = 12.
    assert length_batches([4, 2, 6, 3], batch_size=8, max_tokens=8) == [[1, 3], [0], [2]]


def test_packed_token_budget_counts_the_sum():
    # 2 + 3 = 5 <= 9, + 4 = 9 <= 9, + 6 = 15 > 9.
    assert length_batches([4, 2, 6, 3], max_tokens=9, packed=True) == [[1, 3, 0], [2]]


def test_a_sequence_over_the_budget_gets_a_batch_of_its_own():
    assert length_batches([20, 1], batch_size=4, max_tokens=8) == [[1], [0]]
    assert length_batches([], batch_size=4) == []


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_even_after_an_error(training):
    model = torch.nn.Dropout(0.5).train(training)
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("a failed batch")
    assert model.training is training
