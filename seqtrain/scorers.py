"""Translation scores of ``eval.scorers``, with OpenNMT-tf 2.32's definitions.

Hypotheses are the detokenized 1-best translations, references the raw lines of the reference
file. bleu, chrf, chrf++ and ter are sacrebleu's corpus scores (0-100; chrf++ is chrF with word
bigrams, ``word_order=2``); wer is OpenNMT-tf's: the mean over lines of the word-level edit
distance divided by the reference's word count (a fraction, 1.0 for an empty reference).
"""

from __future__ import annotations

LOWER_IS_BETTER = frozenset({"ter", "wer"})  # the other scorers: higher is better


def score_translations(hypotheses, references, scorers) -> dict[str, float]:
    """{scorer: corpus score} for each requested scorer (eval.scorers names)."""
    import sacrebleu  # only evaluation needs it

    metrics = {}
    if "bleu" in scorers:
        metrics["bleu"] = float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    if "chrf" in scorers:
        metrics["chrf"] = float(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    if "chrf++" in scorers:
        chrf_pp = sacrebleu.corpus_chrf(hypotheses, [references], word_order=2)
        metrics["chrf++"] = float(chrf_pp.score)
    if "ter" in scorers:
        metrics["ter"] = float(sacrebleu.corpus_ter(hypotheses, [references]).score)
    if "wer" in scorers:
        metrics["wer"] = corpus_wer(hypotheses, references)
    return metrics


def corpus_wer(hypotheses, references) -> float:
    """Mean sentence WER over the line pairs (1.0 when there is none)."""
    pairs = list(zip(references, hypotheses))
    if not pairs:
        return 1.0
    return sum(sentence_wer(ref.split(), hyp.split()) for ref, hyp in pairs) / len(pairs)


def sentence_wer(reference: list[str], hypothesis: list[str]) -> float:
    """Levenshtein distance over words (substitution, insertion, deletion cost 1) / len(ref)."""
    if not reference:
        return 1.0
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            same = previous[j - 1] if ref_word == hyp_word else previous[j - 1] + 1
            current.append(min(same, current[j - 1] + 1, previous[j] + 1))
        previous = current
    return previous[-1] / len(reference)
