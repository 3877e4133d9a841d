"""Submission writers and the checker (library and CLI)."""
import numpy as np
import pytest

from tunelab.errors import UserError
from tunelab.io.submission import (
    MIN_PROBABILITY, TIE_PROBABILITY, check_submission, write_arena_submission, write_map_submission,
)


def _write(tmp_path, text, name="sub.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_arena_writer_output_is_valid_and_normalised(tmp_path):
    probs = np.array([[0.2, 0.3, 0.5], [1.0, 1.0, 2.0], [0.7, 0.3, 0.0]])
    path = write_arena_submission([11, 12, 13], probs, tmp_path / "s.csv")
    result = check_submission(path, "arena", expected_ids=["11", "12", "13"])
    assert result.rows == 3
    lines = path.read_text().splitlines()
    assert lines[0] == "id,winner_model_a,winner_model_b,winner_tie"
    values = [float(v) for v in lines[2].split(",")[1:]]
    assert values == pytest.approx([0.25, 0.25, 0.5])


def test_arena_writer_two_way_gets_a_tie_floor_and_rejects_nan(tmp_path):
    path = write_arena_submission(["a"], np.array([[0.4, 0.6]]), tmp_path / "s.csv")
    a, b, tie = (float(v) for v in path.read_text().splitlines()[1].split(",")[1:])
    assert tie == pytest.approx(TIE_PROBABILITY) and a + b + tie == pytest.approx(1.0, abs=1e-9)
    assert a / b == pytest.approx(0.4 / 0.6)  # a and b scaled alike
    with pytest.raises(UserError, match="NaN"):
        write_arena_submission(["a"], np.array([[np.nan, 0.5, 0.5]]), tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize("text, message", [
    ("winner_model_a,winner_model_b,winner_tie\n0.2,0.3,0.5\n", "missing column `id`"),
    ("id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.4\n", r"row 1: probabilities sum to 0.9"),
    ("id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.5\n2,NaN,0.5,0.5\n", r"row 2, column `winner_model_a`.*not a finite number"),
    ("id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.5\n1,0.2,0.3,0.5\n", "row 2: duplicate id `1`"),
    ("id,winner_model_a,winner_model_b,winner_tie\n,0.2,0.3,0.5\n", "row 1 has an empty `id`"),
    ("id,winner_model_a,winner_model_b,winner_tie\n1,1.5,-0.5,0\n", "outside"),
    ("id,winner_model_a,winner_model_b,winner_tie,extra\n1,0.2,0.3,0.5,x\n", "unexpected column `extra`"),
    ("", "empty"),
])
def test_arena_checker_rejects_bad_files(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        check_submission(_write(tmp_path, text), "arena")


def test_checker_compares_ids_with_test_data(tmp_path):
    path = _write(tmp_path, "id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.5\n")
    with pytest.raises(UserError, match="1 test ids have no prediction, e.g. `2`"):
        check_submission(path, "arena", expected_ids=[1, 2])
    two = _write(tmp_path, "id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.5\n5,0.2,0.3,0.5\n", "two.csv")
    with pytest.raises(UserError, match="1 ids are not in the test data, e.g. `5`"):
        check_submission(two, "arena", expected_ids=[1])


def test_map_writer_and_checker(tmp_path):
    path = write_map_submission([36696, 36697], [["True_Correct:NA", "False_Neither:NA", "True_Neither:NA"],
                                                 ["False_Misconception:Incomplete"]], tmp_path / "m.csv")
    assert path.read_text().splitlines() == [
        "row_id,Category:Misconception",
        "36696,True_Correct:NA False_Neither:NA True_Neither:NA",
        "36697,False_Misconception:Incomplete",
    ]
    assert check_submission(path, "map").rows == 2
    bad = _write(tmp_path, "row_id,Category:Misconception\n1,a:NA b:NA c:NA d:NA\n", "bad.csv")
    with pytest.raises(UserError, match="row 1: 4 labels"):
        check_submission(bad, "map")
    empty = _write(tmp_path, "row_id,Category:Misconception\n1,\n", "empty.csv")
    with pytest.raises(UserError, match="row 1: empty"):
        check_submission(empty, "map")


def test_arena_log_loss_on_a_test_set_with_a_tie_is_finite(tmp_path):
    """A 2-way model (no ties in training) once wrote winner_tie = 0: one tie in the test data made the
    arena log loss infinite. Now every written probability is > 0."""
    import pandas as pd

    two_way = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    path = write_arena_submission([1, 2, 3], two_way, tmp_path / "s.csv")
    written = pd.read_csv(path)[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    truth = np.array([0, 1, 2])  # the last test row is a tie
    with np.errstate(divide="ignore"):
        loss = -np.mean(np.log(written[np.arange(3), truth]))  # no clipping: what a strict scorer computes
    assert np.isfinite(loss) and loss < 3.0
    # A 3-way model's probability that underflows to 0 is floored as well (and rows still sum to 1).
    path = write_arena_submission([1], np.array([[1.0, 0.0, 0.0]]), tmp_path / "three.csv")
    row = pd.read_csv(path).iloc[0, 1:].to_numpy(dtype=float)
    assert row.min() >= MIN_PROBABILITY * 0.99 and row.sum() == pytest.approx(1.0, abs=1e-6)


def test_map_writer_refuses_a_label_with_a_space_by_name(tmp_path):
    with pytest.raises(UserError, match=r"label `card arrival` contains a space.*card_arrival"):
        write_map_submission([1], [["lost_card", "card arrival"]], tmp_path / "m.csv")
    with pytest.raises(UserError, match=r"label `card arrival` contains a space"):  # a joined string is one label
        write_map_submission([1], ["card arrival"], tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_cli_submission_check_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    good = write_arena_submission([1], np.array([[0.2, 0.3, 0.5]]), tmp_path / "good.csv")
    bad = _write(tmp_path, "id,winner_model_a,winner_model_b,winner_tie\n1,0.2,0.3,0.4\n")
    runner = CliRunner()
    ok = runner.invoke(app, ["submission", "check", str(good), "--format", "arena"])
    assert ok.exit_code == 0, ok.output
    assert "valid arena submission, 1 rows" in " ".join(ok.output.split())
    fail = runner.invoke(app, ["submission", "check", str(bad), "--format", "arena"])
    assert fail.exit_code == 2
    assert "probabilities sum to 0.9" in " ".join(fail.output.split())
    assert "Traceback" not in fail.output
