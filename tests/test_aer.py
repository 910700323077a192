"""AER / precision / recall: hand-computed cases, file conventions (0/1-based, reversed), errors."""

import math

import pytest

from seqtrain.aer import aer_files, format_scores, parse_gold_line, read_links, score
from seqtrain.errors import SeqtrainError


def test_parse_gold_line_sure_and_possible():
    sure, possible = parse_gold_line("0-1 2p3 4?5 0-1\n")
    assert sure == {(0, 1)}
    assert possible == {(0, 1), (2, 3), (4, 5)}  # sure links are also possible


def test_parse_gold_line_one_based_and_empty():
    assert parse_gold_line("1-2 3p4", one_based=True) == ({(0, 1)}, {(0, 1), (2, 3)})
    assert parse_gold_line("   \n") == (set(), set())


@pytest.mark.parametrize("token", ["1-", "-1-2", "a-b", "1-2-3", "12", "1–2", "1p-2", "0x1-2"])
def test_parse_gold_line_rejects_malformed_tokens(token):
    with pytest.raises(ValueError, match=repr(token).replace("?", r"\?")):
        parse_gold_line(f"0-0 {token}")


def test_parse_gold_line_rejects_index_zero_when_one_based():
    with pytest.raises(ValueError, match="1-based"):
        parse_gold_line("1-1 0-2", one_based=True)


def test_score_perfect_and_disjoint():
    gold = [{(0, 0), (1, 1)}, {(0, 1)}]
    perfect = score(gold, gold, gold)
    assert (perfect["aer"], perfect["precision"], perfect["recall"]) == (0.0, 1.0, 1.0)
    disjoint = score([{(0, 1), (1, 0)}, {(0, 0)}], gold, gold)
    assert (disjoint["aer"], disjoint["precision"], disjoint["recall"]) == (1.0, 0.0, 0.0)


def test_score_mixed_sure_possible():
    # S = {0-0, 1-1}; P = S + {1-2, 2-2}; A = {0-0, 1-2, 2-0}.
    # |A| = 3, |S| = 2, |P| = 4, A∩S = {0-0} (1), A∩P = {0-0, 1-2} (2)
    # precision = 2/3, recall = 1/2, AER = 1 - (1 + 2) / (3 + 2) = 0.4
    sure = [{(0, 0), (1, 1)}]
    possible = [{(0, 0), (1, 1), (1, 2), (2, 2)}]
    result = score([{(0, 0), (1, 2), (2, 0)}], sure, possible)
    assert result["aer"] == pytest.approx(0.4)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(0.5)
    assert (result["a"], result["s"], result["p"], result["s_hits"], result["p_hits"]) == (
        3,
        2,
        4,
        1,
        2,
    )


def test_score_sums_counts_over_the_corpus():
    # Sentence 1: A = S = {0-0}. Sentence 2: A = {0-0, 0-1, 0-2}, S = P = {1-1}.
    # Totals |A| = 4, |S| = 2, A∩S = A∩P = 1 → P = 1/4, R = 1/2, AER = 1 - 2/6 = 2/3
    # (averaging per-sentence AERs would give (0 + 1) / 2 = 0.5 instead).
    hyp = [{(0, 0)}, {(0, 0), (0, 1), (0, 2)}]
    gold = [{(0, 0)}, {(1, 1)}]
    result = score(hyp, gold, gold)
    assert result["aer"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(0.25)
    assert result["recall"] == pytest.approx(0.5)


def test_score_undefined_figures_are_nan():
    # No hypothesis links: precision 0/0 is undefined; AER = 1 - 0 / (0 + 1) = 1.
    result = score([set()], [{(0, 0)}], [{(0, 0)}])
    assert math.isnan(result["precision"])
    assert result["recall"] == 0.0 and result["aer"] == 1.0


def test_score_rejects_different_lengths():
    with pytest.raises(ValueError, match="must be equal"):
        score([set(), set()], [set()], [set()])


# A few lines in the formats of the real test sets (WPT/TALP gold with sure and possible links,
# 0-based and 1-based, and an aligner's 0-based output).
GOLD_0 = "0-0 1-1 2p2 3p2\n0-0 1p1 2-3\n\n0-1 1-0\n"
GOLD_1 = "1-1 2-2 3p3 4p3\n1-1 2p2 3-4\n\n1-2 2-1\n"
HYP_0 = "0-0 1-1 2-2 3-3\n0-0 2-3 3-3\n0-0\n0-1\n"
# Hand count: S = {0-0, 1-1 | 0-0, 2-3 | - | 0-1, 1-0} → |S| = 6; |P| = 6 + 3 = 9
# A: 4 + 3 + 1 + 1 = 9; A∩S = 2 + 2 + 0 + 1 = 5; A∩P = 3 (0-0 1-1 2-2) + 2 + 0 + 1 = 6
# precision = 6/9, recall = 5/6, AER = 1 - (5 + 6) / (9 + 6) = 4/15


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_aer_files_hand_counted(tmp_path):
    result = aer_files(write(tmp_path, "gold", GOLD_0), write(tmp_path, "hyp", HYP_0))
    assert result["aer"] == pytest.approx(4 / 15)
    assert result["precision"] == pytest.approx(6 / 9)
    assert result["recall"] == pytest.approx(5 / 6)
    assert (result["a"], result["s"], result["p"]) == (9, 6, 9)


def test_one_based_reference_scores_like_zero_based(tmp_path):
    hyp = write(tmp_path, "hyp", HYP_0)
    zero = aer_files(write(tmp_path, "gold0", GOLD_0), hyp)
    one = aer_files(write(tmp_path, "gold1", GOLD_1), hyp, reference_one_based=True)
    assert one == zero
    both_one = aer_files(
        write(tmp_path, "gold1b", GOLD_1),
        write(tmp_path, "hyp1", "1-1 2-2 3-3 4-4\n1-1 3-4 4-4\n1-1\n1-2\n"),
        reference_one_based=True,
        hypothesis_one_based=True,
    )
    assert both_one == zero


def test_reversed_hypothesis(tmp_path):
    flipped = "\n".join(
        " ".join(f"{j}-{i}" for i, j in (map(int, p.split("-")) for p in line.split()))
        for line in HYP_0.splitlines()
    )
    gold = write(tmp_path, "gold", GOLD_0)
    straight = aer_files(gold, write(tmp_path, "hyp", HYP_0))
    assert aer_files(gold, write(tmp_path, "rev", flipped + "\n"), reverse=True) == straight
    assert aer_files(gold, write(tmp_path, "rev2", flipped + "\n"))["aer"] != straight["aer"]


def test_read_links_reverse_swaps_pairs(tmp_path):
    path = write(tmp_path, "gold", "0-1 2p3\n")
    assert list(read_links(path, reverse=True)) == [({(1, 0)}, {(1, 0), (3, 2)})]


def test_read_links_error_names_file_line_and_token(tmp_path):
    path = write(tmp_path, "bad.align", "0-0\n1-1\n0-0 2_3\n")
    with pytest.raises(SeqtrainError) as error:
        list(read_links(path))
    message = str(error.value)
    assert path in message and "line 3" in message and "'2_3'" in message


def test_read_links_rejects_binary_and_missing_files(tmp_path):
    path = tmp_path / "bin.align"
    path.write_bytes(b"0-0\n\xff\xfe-1\n")
    with pytest.raises(SeqtrainError, match="line 2: not UTF-8"):
        list(read_links(str(path)))
    with pytest.raises(SeqtrainError, match="cannot read"):
        list(read_links(str(tmp_path / "missing.align")))


def test_aer_files_line_count_mismatch(tmp_path):
    with pytest.raises(SeqtrainError, match="has 4 lines but .* has 2"):
        aer_files(write(tmp_path, "gold", GOLD_0), write(tmp_path, "hyp", "0-0\n0-0\n"))


def test_format_scores():
    result = score([{(0, 0), (1, 2), (2, 0)}], [{(0, 0), (1, 1)}], [{(1, 2), (2, 2)}])
    assert format_scores(result) == (
        "AER = 40.00 ; Precision = 66.67 ; Recall = 50.00 (|A| = 3, |S| = 2, |P| = 4)"
    )
