"""Each kind of bad input gets a clear error or is counted and set aside."""

import os

import numpy as np
import pytest

from animerec.data import convert, interactions, kaggle
from animerec.data.summary import summarize
from tests.conftest import write_csv

HEADER = "user_id,anime_id,rating,watching_status,watched_episodes\n"


def _read_animelist(folder, body, header=HEADER):
    path = write_csv(folder, kaggle.ANIMELIST_CSV, header + body)
    report = kaggle.ReadReport(path)
    blocks = list(kaggle.iter_animelist(path, report))
    rows = np.concatenate([b.line for b in blocks]) if blocks else np.array([])
    return report, rows


def test_malformed_rows_are_set_aside_with_line_numbers(tmp_path):
    body = (
        "1,10,8,2,12\n"  # line 2: good
        "1,11,8,2\n"  # line 3: too few fields
        "1,12,8,2,12,5\n"  # line 4: too many fields
        "1,abc,8,2,12\n"  # line 5: non-numeric anime_id
        "1,13,11,2,12\n"  # line 6: score outside 0-10
        "1,14,8,5,12\n"  # line 7: unknown status 5
        "\n"  # line 8: blank
        "2,15,-1,2,3\n"  # line 9: negative rating
        "2,16,7,1,3\n"  # line 10: good
    )
    report, lines = _read_animelist(tmp_path, body)
    assert lines.tolist() == [2, 10]
    assert report.rows_read == 9
    assert report.set_aside == {
        "wrong field count": 2,
        "non-numeric field": 1,
        "rating outside 0-10": 2,
        "unknown watching_status": 1,
        "blank line": 1,
    }
    assert report.examples["non-numeric field"] == ["line 5: anime_id='abc'"]
    assert "line 3: expected 5 fields, got 4" in report.examples["wrong field count"]
    assert report.examples["unknown watching_status"] == ["line 7: watching_status=5"]


def test_rows_that_all_have_a_field_too_many_are_set_aside(tmp_path):
    """pandas reads a block whose every line has one field more than the header names
    with the first field as an index, the others shifted; no such row may be read."""
    report, lines = _read_animelist(tmp_path, "7,1,8,2,12,99\n7,5,9,2,3,99\n")
    assert lines.tolist() == [] and report.rows_read == 2
    assert report.set_aside == {"wrong field count": 2}
    assert report.examples["wrong field count"][0] == "line 2: expected 5 fields, got 6"


@pytest.mark.parametrize("number", ["99999999999999999999", str(2**63), str(2**64 - 1)])
def test_a_number_beyond_int64_is_set_aside(tmp_path, number):
    """Above 2^64 pandas refuses the block; from 2^63 it reads uint64, which int64 would
    wrap negative: either way the row is named for the number it holds."""
    report, lines = _read_animelist(tmp_path, f"1,10,8,2,12\n1,5,8,2,{number}\n1,11,7,2,3\n")
    assert lines.tolist() == [2, 4]
    assert report.set_aside == {"number beyond int64": 1}
    assert report.examples["number beyond int64"] == [f"line 3: watched_episodes={number!r}"]


def test_non_utf8_bytes_are_set_aside(tmp_path):
    path = os.path.join(tmp_path, kaggle.ANIMELIST_CSV)
    with open(path, "wb") as f:
        f.write(HEADER.encode() + b"1,10,8,2,12\n1,1\xff1,8,2,12\n")
    report = kaggle.ReadReport(path)
    blocks = list(kaggle.iter_animelist(path, report))
    assert sum(len(b.user_id) for b in blocks) == 1
    assert report.set_aside == {"non-UTF-8 bytes": 1}
    assert report.examples["non-UTF-8 bytes"] == ["line 3"]


def test_missing_file_names_it(tmp_path):
    with pytest.raises(kaggle.DataError, match=r"animelist\.csv: file is missing"):
        list(kaggle.iter_animelist(str(tmp_path / kaggle.ANIMELIST_CSV), kaggle.ReadReport("x")))


def test_empty_file_names_it(tmp_path):
    path = write_csv(tmp_path, kaggle.ANIMELIST_CSV, "")
    with pytest.raises(kaggle.DataError, match=r"animelist\.csv: file is empty"):
        list(kaggle.iter_animelist(path, kaggle.ReadReport(path)))
    path = write_csv(tmp_path, kaggle.ANIME_WITH_SYNOPSIS_CSV, "")
    with pytest.raises(kaggle.DataError, match=r"anime_with_synopsis\.csv: file is empty"):
        kaggle.read_anime_with_synopsis(path)


def test_header_only_file_names_it(tmp_path):
    path = write_csv(tmp_path, kaggle.ANIMELIST_CSV, HEADER)
    with pytest.raises(kaggle.DataError, match=r"animelist\.csv: no rows after the header line"):
        list(kaggle.iter_animelist(path, kaggle.ReadReport(path)))
    with pytest.raises(kaggle.DataError, match=r"animelist\.csv: no rows after the header line"):
        kaggle.key_aligned_ranges(path, 1 << 20)


def test_missing_column_names_it(tmp_path):
    path = write_csv(tmp_path, kaggle.ANIMELIST_CSV, "user_id,anime_id,rating,watched_episodes\n1,2,3,4\n")
    with pytest.raises(kaggle.DataError, match=r"animelist\.csv: header lacks column\(s\) \['watching_status'\]"):
        list(kaggle.iter_animelist(path, kaggle.ReadReport(path)))
    path = write_csv(tmp_path, kaggle.ANIME_WITH_SYNOPSIS_CSV, "MAL_ID,Name,Score,sypnopsis\n1,A,8,x\n")
    with pytest.raises(kaggle.DataError, match=r"lacks column Genres or Genders"):
        kaggle.read_anime_with_synopsis(path)


def test_catalog_with_extra_field_names_the_line(tmp_path):
    path = write_csv(
        tmp_path,
        kaggle.ANIME_WITH_SYNOPSIS_CSV,
        "MAL_ID,Name,Score,Genres,sypnopsis\n1,A,8,Drama,x\n2,B,7,Drama,y,extra\n",
    )
    with pytest.raises(kaggle.DataError, match=r"anime_with_synopsis\.csv: malformed CSV: .*line 3"):
        kaggle.read_anime_with_synopsis(path)


def test_catalog_bad_and_duplicate_ids_are_set_aside(tmp_path):
    path = write_csv(
        tmp_path,
        kaggle.ANIME_WITH_SYNOPSIS_CSV,
        "MAL_ID,Name,Score,Genres,sypnopsis\n1,A,8,Drama,x\nxx,B,7,Drama,y\n1,A again,8,Drama,z\n3,C,7,Drama,\n",
    )
    frame, report = kaggle.read_anime_with_synopsis(path)
    assert frame["anime_id"].tolist() == [1, 3]
    assert frame["name"].tolist() == ["A", "C"]
    assert report.set_aside == {"non-numeric MAL_ID": 1, "duplicate MAL_ID": 1}
    assert report.examples["non-numeric MAL_ID"] == ["record 2: MAL_ID='xx'"]


def test_catalog_non_utf8_is_repaired_and_counted(tmp_path):
    path = os.path.join(tmp_path, kaggle.ANIME_WITH_SYNOPSIS_CSV)
    with open(path, "wb") as f:
        f.write(b"MAL_ID,Name,Score,Genres,sypnopsis\n1,Caf\xe9,8,Drama,x\n")
    frame, report = kaggle.read_anime_with_synopsis(path)
    assert frame["name"].tolist() == ["Caf\ufffd"]  # the bad byte replaced, the rest of the name kept
    assert report.repaired["non-UTF-8 bytes replaced"] == 1


def _tiny_dataset(folder, animelist_body):
    write_csv(
        folder,
        kaggle.ANIME_WITH_SYNOPSIS_CSV,
        "MAL_ID,Name,Score,Genres,sypnopsis\n10,A,8,Drama,x\n11,B,7,Comedy,y\n12,C,7,Comedy,z\n",
    )
    write_csv(folder, kaggle.ANIMELIST_CSV, HEADER + animelist_body)


def test_duplicates_and_unknown_anime_are_counted(tmp_path):
    _tiny_dataset(tmp_path, "1,10,8,2,1\n1,10,9,2,1\n1,11,8,2,1\n1,99,8,2,1\n2,12,8,2,1\n")
    result = summarize(str(tmp_path))
    stats = result["interactions"]
    assert stats["rows_by_reason"] == {interactions.LIKED: 3, interactions.DUPLICATE: 1, interactions.NOT_IN_CATALOG: 1}
    assert stats["anime_without_metadata"] == 1
    assert result["animelist"]["set_aside"] == {interactions.DUPLICATE: 1}
    assert result["animelist"]["examples"][interactions.DUPLICATE] == ["line 3: user 1, anime 10"]


def test_ungrouped_users_are_an_error_naming_the_line(tmp_path):
    _tiny_dataset(tmp_path, "1,10,8,2,1\n2,11,8,2,1\n1,12,8,2,1\n")
    with pytest.raises(kaggle.DataError, match=r"animelist\.csv line 4, field user_id: user 1 appears again"):
        summarize(str(tmp_path))


def test_a_huge_user_id_is_read_like_any_other(tmp_path):
    """The grouping check keeps the ids it has seen, not a bitmap as long as the largest:
    an id near 2^63 is a user like any other, and a repeat of it is still caught."""
    huge = 2**63 - 1
    _tiny_dataset(tmp_path, f"1,10,8,2,1\n{huge},11,8,2,1\n{huge},12,8,2,1\n")
    assert summarize(str(tmp_path))["interactions"]["rows_by_reason"] == {interactions.LIKED: 3}
    _tiny_dataset(tmp_path, f"{huge},10,8,2,1\n1,11,8,2,1\n{huge},12,8,2,1\n")
    with pytest.raises(kaggle.DataError, match=rf"line 4, field user_id: user {huge} appears again"):
        summarize(str(tmp_path))


def test_converter_refuses_data_with_nothing_to_evaluate(tmp_path):
    _tiny_dataset(tmp_path, "1,10,8,2,1\n")
    with pytest.raises(kaggle.DataError, match="no eval rows"):
        convert.convert_kaggle(str(tmp_path), str(tmp_path / "out"), progress=lambda _: None)


def test_a_user_split_across_converter_ranges_is_regrouped(tmp_path, monkeypatch):
    # Each range is checked on its own; user 1 returning two ranges later is caught when
    # they are merged, and the converter then regroups the file by user.
    body = "".join(f"{u},{10 + i},8,2,1\n" for u in (1, 2, 3, 1) for i in range(6))
    _tiny_dataset(tmp_path, body)
    monkeypatch.setattr(convert, "RANGE_BYTES", 40)
    assert len(kaggle.key_aligned_ranges(str(tmp_path / kaggle.ANIMELIST_CSV), 40)) == 4
    messages = []
    # User 1's second run of rows repeats its first (anime 10-15): regrouped, they are one
    # user's rows, so all 6 are duplicates. (Three catalog titles leave nothing to evaluate.)
    with pytest.raises(kaggle.DataError, match="no eval rows .*'duplicate user-anime row': 6"):
        convert.convert_kaggle(str(tmp_path), str(tmp_path / "out"), progress=messages.append)
    assert any("animelist.csv line 20, field user_id: user 1 appears again" in m for m in messages)
