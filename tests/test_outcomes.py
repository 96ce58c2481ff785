import json

import pandas as pd
import pytest

from training.outcomes import OutcomesError, read_outcomes

ROWS = [
    {"prompt": "What is 2+2?", "model": "gpt-4-1106-preview", "quality": 1.0, "cost_usd": 0.01},
    {"prompt": "What is 2+2?", "model": "openai/gpt-3.5-turbo-1106", "quality": 0.0},
]


def write(tmp_path, name, rows):
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("name", ["o.jsonl", "o.csv", "o.parquet"])
def test_every_format_reads_the_same_rows(tmp_path, name):
    frame = read_outcomes(write(tmp_path, name, ROWS))
    assert frame["model"].tolist() == ["openai/gpt-4-1106-preview", "openai/gpt-3.5-turbo-1106"]
    assert frame["quality"].tolist() == [1.0, 0.0]
    assert frame["cost_usd"].iloc[0] == 0.01
    assert pd.isna(frame["cost_usd"].iloc[1])
    assert frame["prompt_id"].nunique() == 1


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{**ROWS[0], "quality": 1.5}], "row 1, column 'quality'"),
        ([ROWS[0], {**ROWS[1], "quality": "good"}], "row 2, column 'quality'"),
        ([ROWS[0], {**ROWS[1], "prompt": "   "}], "row 2, column 'prompt'"),
        ([{**ROWS[0], "cost_usd": -1}], "row 1, column 'cost_usd'"),
        ([{**ROWS[0], "input_tokens": "many"}], "row 1, column 'input_tokens'"),
        ([{"prompt": "x", "model": "m"}], "missing required column(s): quality"),
    ],
)
def test_bad_rows_name_the_row_and_column(tmp_path, rows, message):
    with pytest.raises(OutcomesError) as error:
        read_outcomes(write(tmp_path, "bad.jsonl", rows))
    assert message in str(error.value)


def test_invalid_json_line_names_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(OutcomesError, match="row 2: not valid JSON"):
        read_outcomes(path)


def test_missing_and_unsupported_files_are_clear_errors(tmp_path):
    with pytest.raises(OutcomesError, match="no such file"):
        read_outcomes(tmp_path / "absent.jsonl")
    other = tmp_path / "o.xlsx"
    other.write_text("x")
    with pytest.raises(OutcomesError, match="unsupported file type"):
        read_outcomes(other)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(OutcomesError):
        read_outcomes(empty)
