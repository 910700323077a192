"""seqtrain.score: batching, numbers against a one-pair forward pass, output format, errors.

The trained-model checks (score reproduces translate's alignments on its own outputs and eval's
AER on the dev set) are at the end, marked slow.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_corpus, run_cli, tiny_config, write_config, write_lines
from test_word_alignments import chars, one_hot_rows  # noqa: F401 (chars: a fixture)

from seqtrain import aer, decoding, export, score, translate
from seqtrain import config as cfg
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.evaluate import evaluate_command
from seqtrain.vocab import UNK, Vocab, read_text_lines


def read(path):
    return list(read_text_lines(path))


def test_sorted_batches_by_hand():
    lengths = [5, 2, 9, 2, 7]  # sorted: 1 (2), 3 (2), 0 (5), 4 (7), 2 (9)
    as_lists = lambda batches: [b.tolist() for b in batches]  # noqa: E731
    assert as_lists(score.sorted_batches(lengths, 2)) == [[1, 3], [0, 4], [2]]
    # tokens: B x longest <= 10: [2, 2] = 4, + 5 -> 15 > 10; [5], + 7 -> 14; [7]; [9].
    assert as_lists(score.sorted_batches(lengths, 10, "tokens")) == [[1, 3], [0], [4], [2]]
    assert as_lists(score.sorted_batches(lengths, 4, "tokens")) == [[1, 3], [0], [4], [2]]
    # Buckets of width 4: (length - 1) // 4 = 0, 0 | 1, 1 | 2.
    assert as_lists(score.sorted_batches(lengths, 8, "examples", 4)) == [[1, 3], [0, 4], [2]]
    assert as_lists(score.sorted_batches(lengths, 8, "examples", 8)) == [[1, 3, 0, 4], [2]]


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """(config, corpus): a seeded untrained 2-layer model's checkpoint on the toy corpus."""
    root = tmp_path_factory.mktemp("score")
    corpus = make_corpus(str(root / "data"), lines=20)
    config = cfg.build(tiny_config(corpus, root / "run", score={"batch_size": 3}), "test")
    tf.train.Checkpoint(model=build_model(config)).save(os.path.join(config.model_dir, "ckpt"))
    return config, corpus


def one_pair_forward(model, source_ids, target_ids):
    """(nll [n + 1], attention [n, S]) of one unpadded pair: logits through numpy log-softmax."""
    batch = {
        "source_ids": tf.constant([source_ids], tf.int32),
        "source_length": tf.constant([len(source_ids)], tf.int32),
        "target_in": tf.constant([[decoding.BOS_ID, *target_ids]], tf.int32),
        "target_length": tf.constant([len(target_ids) + 1], tf.int32),
    }
    logits, attention = (x.numpy()[0] for x in model(batch))
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = [*target_ids, decoding.EOS_ID]
    return -log_probs[np.arange(len(labels)), labels], attention[: len(target_ids)]


def test_score_command_lines_equal_one_pair_forward(untrained, tmp_path):
    """Every field of every line, in input order, from length-sorted batches of 3 padded pairs,
    against each pair run alone."""
    config, corpus = untrained
    model = build_model(config)
    tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(config.model_dir))
    src_vocab, tgt_vocab = Vocab.load(corpus["src.vocab"]), Vocab.load(corpus["tgt.vocab"])
    sources, targets = read(corpus["dev.src"])[:10], read(corpus["dev.tgt"])[:10]
    assert sorted(map(len, sources)) != list(map(len, sources))  # sorting reorders them
    src, tgt = str(tmp_path / "in.src"), str(tmp_path / "in.tgt")
    write_lines(src, sources)
    write_lines(tgt, targets)
    hard, soft = str(tmp_path / "hard.txt"), str(tmp_path / "soft.txt")
    score.score_command(config, src, tgt, hard, None, "hard", True)
    score.score_command(config, src, tgt, soft, None, "soft")
    hard_lines, soft_lines = read(hard), read(soft)
    assert len(hard_lines) == len(soft_lines) == len(sources)
    for k, (source, target) in enumerate(zip(sources, targets)):
        nll, attention = one_pair_forward(
            model, src_vocab.ids(source.split()), tgt_vocab.ids(target.split())
        )
        value, text, token_scores, links = hard_lines[k].split(" ||| ")
        assert text == target
        assert float(value) == pytest.approx(nll.sum(), abs=1e-5)  # %f: 6 decimals
        np.testing.assert_allclose([float(x) for x in token_scores.split()], nll[:-1], atol=5e-6)
        expected = decoding.hard_alignments(attention, *attention.shape, "intersection")
        assert links == translate.format_links(expected)
        value, text, rows = soft_lines[k].split(" ||| ")
        matrix = np.array([[float(x) for x in row.split()] for row in rows.split(" ; ")])
        assert matrix.shape == (len(target.split()), len(source.split()))
        np.testing.assert_allclose(matrix, attention, atol=2e-6)


def test_score_words_level_by_hand(chars, tmp_path, monkeypatch):  # noqa: F811
    """alignment_level words: the target line as text, per-word scores (sums of the pieces'),
    piece links merged to word links, with scripted rows (the Scorer replaced)."""
    model_path, vocab_path = chars
    write_lines(tmp_path / "in.src", ["ab c de"])
    write_lines(tmp_path / "in.tgt", ["ed ba"])
    config = cfg.build({
        "model_dir": str(tmp_path / "model"),
        "data": {"source_vocabulary": vocab_path, "target_vocabulary": vocab_path,
                 "source_tokenization": model_path, "target_tokenization": model_path,
                 "alignment_level": "words"},
        "model": {"num_layers": 1, "num_units": 8, "num_heads": 2, "ffn_inner_dim": 8},
        "params": {"alignment_extraction": "argmax"},
    }, "test")  # fmt: skip
    tf.train.Checkpoint(model=build_model(config)).save(os.path.join(config.model_dir, "ckpt"))
    # Source pieces ▁ a b | ▁ c | ▁ d e, target ▁ e d | ▁ b a: as in test_word_alignments,
    # rows -> source pieces 5 6 0 1 2 4 give word links {(2,0), (0,0), (0,1), (1,1)}.
    nll = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], np.float32)  # 6 pieces + </s>
    scripted = [score.ScoredPair(nll, one_hot_rows([5, 6, 0, 1, 2, 4], 8))]

    def fake_call(self, pairs):
        assert [(len(s), len(t)) for s, t in pairs] == [(8, 6)]
        return scripted

    monkeypatch.setattr(score.Scorer, "__call__", fake_call)
    out = str(tmp_path / "out.txt")
    score.score_command(
        config, str(tmp_path / "in.src"), str(tmp_path / "in.tgt"), out, None, "hard", True
    )
    assert read(out) == ["2.800000 ||| ed ba ||| 0.600000 1.500000 ||| 0-0 2-0 0-1 1-1"]


@pytest.mark.parametrize(
    "source_lines, target_lines, message",
    [
        (["s1 s2", "s3", "s4"], ["t1 t2", "t3"], r"a\.src line 3: no matching line in .*b\.tgt"),
        (["s1 s2", "s3"], ["t1 t2", "t3", "t4"], r"b\.tgt line 3: no matching line in .*a\.src"),
        (["s1 s2", "s3"], ["t1 t2", ""], r"b\.tgt line 2: the target sentence is empty"),
        (["", "s3"], ["t1", "t3"], r"a\.src line 1: the source sentence is empty"),
    ],
)
def test_unscorable_pairs_are_errors(untrained, tmp_path, source_lines, target_lines, message):
    config, _ = untrained
    write_lines(tmp_path / "a.src", source_lines)
    write_lines(tmp_path / "b.tgt", target_lines)
    out = tmp_path / "out.txt"
    with pytest.raises(SeqtrainError, match=message):
        score.score_command(config, str(tmp_path / "a.src"), str(tmp_path / "b.tgt"), str(out))
    assert not out.exists() and not os.path.exists(f"{out}.tmp")


def test_score_cli_error_exits_2_and_writes_nothing(untrained, tmp_path):
    config, corpus = untrained
    path = write_config(tmp_path / "run.yml", cfg.to_dict(config))
    write_lines(tmp_path / "short.tgt", read(corpus["dev.tgt"])[:-1])
    out = tmp_path / "out.txt"
    proc = run_cli(
        "score", "--config", path, "--features_file", corpus["dev.src"],
        "--predictions_file", str(tmp_path / "short.tgt"), "--output_file", str(out),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]  # after TensorFlow's own start-up lines
    assert re.fullmatch(r"seqtrain score: error: .*dev\.src line 40: no matching line .*", line)
    assert not out.exists()


def test_replace_unknown_target_in_translate_and_the_saved_model(untrained, tmp_path):
    """A model pushed to write <unk> at every step (+20 on its output bias): with
    params.replace_unknown_target every output word is a word of its own source line, and the
    SavedModel's graph gives translate's lines."""
    config, corpus = untrained
    model = build_model(config)
    tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(config.model_dir))
    model.output.bias.assign(tf.one_hot(UNK, model.output.bias.shape[0]) * 20.0)
    raw = cfg.merge(cfg.to_dict(config), {
        "model_dir": str(tmp_path / "unk"),
        "params": {"replace_unknown_target": True, "beam_width": 1, "maximum_decoding_length": 4},
    })  # fmt: skip
    config = cfg.build(raw, "test")
    tf.train.Checkpoint(model=model).save(os.path.join(config.model_dir, "ckpt"))
    sources = read(corpus["dev.src"])[:6]
    write_lines(tmp_path / "in.src", sources)
    out = str(tmp_path / "out.txt")
    translate.translate_command(config, str(tmp_path / "in.src"), out)
    lines = read(out)
    for source, line in zip(sources, lines):
        assert len(line.split()) == 4 and set(line.split()) <= set(source.split()), line
    signature = tf.saved_model.load(export.export(config, str(tmp_path / "export")))
    result = signature.signatures["translate"](sentences=tf.constant(sources))
    assert [t.decode() for t in result["translations"].numpy()] == lines


# ---------------------------------------------------------------- a trained copy model (slow)

COPY_WORDS = [f"w{i}" for i in range(24)]
IN_TARGET_VOCAB = 20  # w20..w23 are <unk> on the target side
COPY_STEPS = 600


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory):
    """(config dict, paths): COPY_STEPS steps of a 2-layer, 32-unit model trained to copy its
    input (links i-i), whose target vocabulary lacks w20..w23: it learns to write <unk> there."""
    import random

    from seqtrain import trainer

    root = tmp_path_factory.mktemp("copy")
    rng = random.Random(0)
    paths = {}
    for split, count in (("train", 600), ("dev", 40)):
        lines = [
            " ".join(rng.choice(COPY_WORDS) for _ in range(rng.randint(2, 6))) for _ in range(count)
        ]
        align = [" ".join(f"{i}-{i}" for i in range(len(line.split()))) for line in lines]
        for ext, content in (("src", lines), ("tgt", lines), ("align", align)):
            paths[f"{split}.{ext}"] = str(root / f"{split}.{ext}")
            write_lines(paths[f"{split}.{ext}"], content)
    specials = ["<blank>", "<s>", "</s>", "<unk>"]
    for name, words in (("src.vocab", COPY_WORDS), ("tgt.vocab", COPY_WORDS[:IN_TARGET_VOCAB])):
        paths[name] = str(root / name)
        write_lines(paths[name], specials + words)
    raw = tiny_config(
        paths, root / "run",
        data={"eval_features_file": paths["dev.src"], "eval_labels_file": paths["dev.tgt"],
              "eval_alignments": paths["dev.align"]},
        train={"max_step": COPY_STEPS, "save_checkpoints_steps": COPY_STEPS,
               "save_summary_steps": 100},
        params={"beam_width": 2, "maximum_decoding_length": 12},
        eval={"steps": None, "scorers": []},
    )  # fmt: skip
    trainer.train(cfg.build(raw, "test"))
    return raw, paths


def hard_links(line):
    """The links of a ``... ||| s-t s-t`` line as a set of (s, t)."""
    field = line.rsplit(" ||| ", 1)[1]
    return {tuple(map(int, pair.split("-"))) for pair in field.split()}


@pytest.mark.slow
def test_score_reproduces_translate_links_and_eval_aer(copy_model, tmp_path):
    """score on translate's own outputs gives translate's hard links (translate reads the rows
    from its search steps, score from one teacher-forced pass over padded, length-sorted
    batches); score on the dev set, scored against the gold file, gives eval's AER."""
    raw, paths = copy_model
    config = cfg.build(raw, "test")
    translated = str(tmp_path / "dev.out")
    translate.translate_command(config, paths["dev.src"], translated, with_alignments="hard")
    outputs = [line.split(" ||| ") for line in read(translated)]
    kept = [k for k, (text, _) in enumerate(outputs) if text]  # score refuses empty targets
    assert len(kept) >= 38
    sources = read(paths["dev.src"])
    write_lines(tmp_path / "kept.src", [sources[k] for k in kept])
    write_lines(tmp_path / "kept.tgt", [outputs[k][0] for k in kept])
    scored = str(tmp_path / "kept.scored")
    score.score_command(
        config, str(tmp_path / "kept.src"), str(tmp_path / "kept.tgt"), scored, None, "hard"
    )
    for k, line in zip(kept, read(scored)):
        assert line.split(" ||| ")[1] == outputs[k][0]
        assert hard_links(line) == hard_links(" ||| ".join(outputs[k])), (k, line)
    # AER of score's links on the dev references = eval's AER (its forced decoding).
    dev = str(tmp_path / "dev.scored")
    score.score_command(config, paths["dev.src"], paths["dev.tgt"], dev, None, "hard")
    links = str(tmp_path / "dev.links")
    write_lines(links, [line.rsplit(" ||| ", 1)[1] for line in read(dev)])
    ours = aer.aer_files(paths["dev.align"], links)
    metrics = evaluate_command(config)
    assert metrics["aer"] < 20.0  # the head learned the diagonal: a meaningful comparison
    for key in ("aer", "precision", "recall"):
        assert 100.0 * ours[key] == pytest.approx(metrics[key], abs=1e-9)


@pytest.mark.slow
def test_replace_unknown_target_copies_the_aligned_source_word(copy_model, tmp_path):
    """The copy model writes <unk> for w20..w23; with params.replace_unknown_target each
    becomes the source word it aligns to: the input word at the same position."""
    raw, _ = copy_model
    probes = ["w3 w21 w5", "w20 w1 w2 w9", "w7 w8 w22 w23 w0", "w11 w4 w20"]
    write_lines(tmp_path / "probe.src", probes)
    plain, replaced = str(tmp_path / "plain.txt"), str(tmp_path / "replaced.txt")
    translate.translate_command(cfg.build(raw, "test"), str(tmp_path / "probe.src"), plain)
    raw = cfg.merge(raw, {"params": {"replace_unknown_target": True}})
    translate.translate_command(cfg.build(raw, "test"), str(tmp_path / "probe.src"), replaced)
    unknown = {f"w{i}" for i in range(IN_TARGET_VOCAB, len(COPY_WORDS))}
    expected = [" ".join("<unk>" if w in unknown else w for w in line.split()) for line in probes]
    assert read(plain) == expected  # the model copies, with <unk> for the words it lacks
    assert read(replaced) == probes  # ... and each <unk> takes back its source word
    # The SavedModel does the same in its graph.
    directory = export.export(cfg.build(raw, "test"), str(tmp_path / "export"))
    signature = tf.saved_model.load(directory).signatures["translate"]
    result = signature(sentences=tf.constant(probes))
    assert [t.decode() for t in result["translations"].numpy()] == probes
