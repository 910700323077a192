"""SavedModel export with a ``translate`` signature that runs on plain TensorFlow (no seqtrain).

Signature ``translate`` (also ``serving_default``):

* input ``sentences``: tf.string [B]. Whitespace-tokenized models take raw sentences (split on
  whitespace in-graph, looked up in a ``tf.lookup.StaticHashTable``). SentencePiece source models
  take **pre-tokenized pieces** separated by spaces (``spm_encode`` output, or
  ``sentencepiece.SentencePieceProcessor.encode_as_pieces`` joined with " "): TensorFlow has no
  SentencePiece op, and tensorflow-text, which has one, declares a dependency on the full CUDA
  ``tensorflow`` wheel. The SentencePiece ``.model`` files are stored under ``assets/``.
* outputs: ``translations`` tf.string [B] (detokenized: pieces joined, "▁" -> space, one leading
  space dropped, for SentencePiece targets; tokens joined by spaces otherwise), ``alignments``
  tf.string [B] (hard links ``"s-t s-t"`` as ``seqtrain translate --with_alignments hard``:
  model tokens, or words with ``data.alignment_level: words``, where a piece starting with "▁"
  opens a word on both sides), ``scores`` float32 [B] (the decoding score of the 1-best),
  ``cut`` tf.bool [B] (the 1-best was stopped by the length limit, without ``</s>``: its text is
  incomplete).

Decoding uses params.beam_width, length_penalty, maximum_decoding_length and its relative cap
(maximum_decoding_length_factor/offset, per sentence as in ``seqtrain translate``), the decoding
keys of ``seqtrain.search_rules`` and params.replace_unknown_target (each ``<unk>`` of the
1-best becomes the source piece its alignment row attends to most, as in ``translate``). An
empty input gives an empty translation, no links and score 0. ``assets.extra/seqtrain.json``
records the input form and the decoding settings.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from seqtrain import alignment, checkpoints, ctranslate2_export, decoding
from seqtrain.checkpoints import build_model
from seqtrain.errors import SeqtrainError
from seqtrain.search_rules import SearchOptions
from seqtrain.vocab import SP_MARKER, UNK

logger = logging.getLogger(__name__)

SP_UNKNOWN = " \u2047 "  # " ⁇ ": SentencePiece's decoding of the unknown piece


def restore_model(config, checkpoint_path: str | None = None):
    """(model with restored weights, checkpoint path); the optimizer slots are not loaded.

    checkpoint_path: a prefix (MODEL_DIR/ckpt-5000) or a directory (default model_dir), whose
    newest readable checkpoint is used: unreadable newer ones are named in warnings.
    """
    model = build_model(config)
    checkpoint = tf.train.Checkpoint(model=model)

    def read(prefix):
        try:
            checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:
            raise SeqtrainError(checkpoints.mismatch_message(prefix, e)) from e

    path = checkpoint_path or config.model_dir
    if checkpoint_path is None or os.path.isdir(path):
        directory = path
        path = checkpoints.restore_newest(read, directory) if os.path.isdir(directory) else None
        if path is None and os.path.exists(os.path.join(directory, "ckpt.index")):
            path = os.path.join(directory, "ckpt")  # model_dir/best/ (written without a state file)
            checkpoints.read_or_explain(read, path)
        if path is None:
            raise SeqtrainError(
                f"{directory}: no checkpoint found; train first, or give --checkpoint_path"
            )
    elif not os.path.exists(f"{path}.index"):
        raise SeqtrainError(
            f"{path}: no such checkpoint ({path}.index is missing); give a prefix such as "
            "MODEL_DIR/ckpt-5000 or a directory holding checkpoints"
        )
    else:
        checkpoints.read_or_explain(read, path)
    logger.info("Restored model weights from %s", path)
    return model, path


class TranslateModule(tf.Module):
    """The exported object: the model, vocabulary tables and a string-to-string translate."""

    def __init__(self, config, model):
        super().__init__(name="seqtrain_translate")
        src_tok, tgt_tok, src_vocab, tgt_vocab = alignment.load_tokenizers_and_vocabs(config)
        for side, tok in (("source", src_tok), ("target", tgt_tok)):
            if tok.kind not in ("space", "sentencepiece"):  # no such TensorFlow op
                raise SeqtrainError(
                    f"data.{side}_tokenization: export supports whitespace and SentencePiece "
                    f"tokenization only, not {type(tok).__name__}; translate with seqtrain "
                    "translate, or export a model trained on pre-tokenized text"
                )
        self.model = model
        self.params = config.params
        self.words = config.data.alignment_level == "words"
        self.source_subword, self.target_subword = src_tok.is_subword, tgt_tok.is_subword
        tokens = src_vocab.as_list()
        self.source_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(tokens), tf.range(len(tokens), dtype=tf.int32)
            ),
            default_value=UNK,
        )
        targets = tgt_vocab.as_list()
        if tgt_tok.is_subword:
            targets[UNK] = SP_UNKNOWN  # what SentencePiece's decoder writes for <unk>
        self.target_tokens = tf.constant(targets)
        sp_models = (("source_sp", src_tok.sp_model_path), ("target_sp", tgt_tok.sp_model_path))
        for name, path in sp_models:
            if path:
                setattr(self, name, tf.saved_model.Asset(path))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def translate(self, sentences):
        """sentences tf.string [B] -> translations [B], alignments [B], scores float32 [B],
        cut bool [B]."""
        pieces = tf.strings.split(sentences)  # ragged [B, (S)]
        lengths = tf.cast(pieces.row_lengths(), tf.int32)
        width = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], 0)), 1)  # never an empty axis
        ids = self.source_table.lookup(pieces).to_tensor(0, shape=[tf.shape(sentences)[0], width])
        p = self.params
        limits = decoding.length_limits(
            lengths,
            p.maximum_decoding_length,
            p.maximum_decoding_length_factor,
            p.maximum_decoding_length_offset,
        )
        result = self._search(ids, lengths, limits)
        out_ids, out_len = result.ids[:, 0], result.lengths[:, 0]
        attention = result.attention[:, 0]  # [B, L, S]
        out_tokens = tf.gather(self.target_tokens, out_ids)  # [B, L]
        if p.replace_unknown_target:
            out_tokens = self._copy_unknowns(out_ids, out_tokens, attention, pieces, lengths)
        out_pieces = tf.RaggedTensor.from_tensor(out_tokens, out_len)
        links = self._links(attention, lengths, out_len, pieces, out_pieces)
        empty = tf.equal(lengths, 0)
        return {
            "translations": tf.where(empty, "", self._detokenize(out_pieces)),
            "alignments": tf.where(empty, "", links),
            "scores": tf.where(empty, 0.0, result.scores[:, 0]),
            "cut": tf.logical_and(
                tf.logical_not(empty), decoding.cut_at_limit(result.lengths, limits)[:, 0]
            ),
        }

    def _search(self, ids, lengths, limits):
        """limits: int32 [B] output length limits (``decoding.length_limits``)."""
        p = self.params
        options = SearchOptions.from_params(p)
        if p.beam_width == 1:
            return decoding.greedy_search(self.model, ids, lengths, limits, options)
        return decoding.beam_search(
            self.model, ids, lengths, p.beam_width, p.length_penalty, limits, options=options
        )

    def _copy_unknowns(self, out_ids, out_tokens, attention, source_pieces, source_len):
        """params.replace_unknown_target: each <unk> (out_ids int32 [B, L]) of out_tokens
        tf.string [B, L] -> the source piece (ragged [B, (S)]) its row of attention [B, L, S]
        attends to most, as ``translate.replace_unknowns``."""
        source_mask = tf.sequence_mask(source_len, tf.shape(attention)[2])[:, tf.newaxis]
        best = tf.argmax(tf.where(source_mask, attention, -1.0), axis=-1, output_type=tf.int32)
        source_tokens = source_pieces.to_tensor("", shape=tf.shape(attention)[::2])  # [B, S]
        copied = tf.gather(source_tokens, best, batch_dims=1)
        return tf.where(tf.equal(out_ids, UNK), copied, out_tokens)

    def _detokenize(self, pieces):
        """ragged [B, (L)] pieces -> [B] text."""
        if not self.target_subword:
            return tf.strings.reduce_join(pieces, axis=1, separator=" ")
        # As SentencePiece's decoder: the "▁"s of the leading pieces vanish, the others are
        # spaces (<unk> became " ⁇ " in target_tokens).
        text = tf.strings.regex_replace(
            tf.strings.reduce_join(pieces, axis=1), f"^{SP_MARKER}+", ""
        )
        return tf.strings.regex_replace(text, SP_MARKER, " ")

    def _links(self, attention, source_len, target_len, source_pieces, target_pieces):
        """Hard links "s-t ..." [B] (``decoding.hard_alignments``, params.alignment_extraction):
        argmax over the real source columns of each target row; with ``intersection`` only the
        rows that are also their source column's argmax over the real target rows."""
        source_mask = tf.sequence_mask(source_len, tf.shape(attention)[2])[:, tf.newaxis]
        best = tf.argmax(tf.where(source_mask, attention, -1.0), axis=-1, output_type=tf.int32)
        steps = tf.range(tf.shape(best)[1])[tf.newaxis] + tf.zeros_like(best)  # [B, L]
        keep = tf.ones_like(best, tf.bool)
        if self.params.alignment_extraction == "intersection":
            target_mask = tf.sequence_mask(target_len, tf.shape(attention)[1])[:, :, tf.newaxis]
            best_target = tf.argmax(
                tf.where(target_mask, attention, -1.0), axis=1, output_type=tf.int32
            )  # [B, S]
            keep = tf.equal(tf.gather(best_target, best, batch_dims=1), steps)
        keep = tf.RaggedTensor.from_tensor(keep, target_len)
        if not self.words:
            pairs = tf.strings.as_string(best) + "-" + tf.strings.as_string(steps)
            pairs = tf.ragged.boolean_mask(tf.RaggedTensor.from_tensor(pairs, target_len), keep)
            return tf.strings.reduce_join(pairs, axis=1, separator=" ")
        source_words = _word_of_piece(source_pieces, self.source_subword)  # ragged [B, (S)]
        target_words = _word_of_piece(target_pieces, self.target_subword)  # ragged [B, (L)]
        # (b, target word, source word) of every real target row; a dense 0/1 cube removes
        # duplicates and tf.where lists its cells sorted by (b, target word, source word).
        source_words = source_words.to_tensor(0, shape=tf.shape(attention)[::2])  # [B, S]
        linked = tf.gather(source_words, best, batch_dims=1)  # [B, L]
        linked = tf.RaggedTensor.from_tensor(linked, target_len)
        rows = tf.cast(target_words.value_rowids(), tf.int32)
        cells = tf.stack([rows, target_words.flat_values, linked.flat_values], axis=1)
        cells = tf.boolean_mask(cells, keep.flat_values)
        shape = tf.shape(attention)  # [B, L, S] bounds the word indices of both sides
        cube = tf.scatter_nd(cells, tf.ones_like(cells[:, 0]), shape)
        found = tf.cast(tf.where(cube > 0), tf.int32)  # [K, 3]
        pairs = tf.strings.as_string(found[:, 2]) + "-" + tf.strings.as_string(found[:, 1])
        grouped = tf.RaggedTensor.from_value_rowids(pairs, found[:, 0], nrows=shape[0])
        return tf.strings.reduce_join(grouped, axis=1, separator=" ")


def _word_of_piece(pieces, subword: bool):
    """ragged [B, (n)] pieces -> int32 word index of each piece ("▁" opens a word; the first
    piece is always in word 0); without subwords every piece is a word."""
    position = tf.ragged.range(pieces.row_lengths())
    if not subword:
        return tf.cast(position, tf.int32)
    opens = tf.logical_or(
        tf.equal(tf.strings.substr(pieces, 0, 1, unit="UTF8_CHAR"), SP_MARKER),
        tf.equal(position, 0),
    )
    return tf.cast(tf.math.cumsum(tf.cast(opens, tf.int32), axis=1), tf.int32) - 1


def export_model(config, model, output_dir: str, export_format: str = "saved_model") -> str:
    """Writes ``model`` to output_dir (replaced as a whole) as a SavedModel or, with a
    ``ctranslate2*`` format (``config.ExportFormat``), a CTranslate2 model; returns the path."""
    if export_format != "saved_model":
        quantization = ctranslate2_export.quantization_of(export_format)
        return ctranslate2_export.export_ctranslate2(config, model, output_dir, quantization)
    module = TranslateModule(config, model)
    signatures = {"translate": module.translate, "serving_default": module.translate}
    output_dir = checkpoints.replace_directory(
        output_dir,
        lambda tmp: _write_saved_model(config, module, tmp, signatures),
        "SavedModel",
        errors=(tf.errors.OpError, OSError),
    )
    logger.info("Exported SavedModel to %s", output_dir)
    return output_dir


def _write_saved_model(config, module, tmp: str, signatures: dict) -> None:
    tf.saved_model.save(module, tmp, signatures=signatures)
    p = config.params
    info = {
        "input": "sentencepiece pieces" if module.source_subword else "whitespace tokens",
        "alignment_level": config.data.alignment_level,
        # Which decoder step the guided head was trained on; the signature's links already use it.
        "alignment_row": config.model.alignment_row,
        "alignment_context": config.model.alignment_context,
        "alignment_extraction": p.alignment_extraction,
        "replace_unknown_target": p.replace_unknown_target,
        "beam_width": p.beam_width,
        "length_penalty": p.length_penalty,
        "maximum_decoding_length": p.maximum_decoding_length,
        "maximum_decoding_length_factor": p.maximum_decoding_length_factor,
        "maximum_decoding_length_offset": p.maximum_decoding_length_offset,
    }
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, "assets.extra", "seqtrain.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def export(
    config, output_dir: str, checkpoint_path: str | None = None, export_format="saved_model"
) -> str:
    """``seqtrain export``: a checkpoint (default: model_dir's latest) as ``export_format``."""
    if export_format != "saved_model":
        ctranslate2_export.require_ctranslate2()  # before restoring anything
    model, _ = restore_model(config, checkpoint_path)
    return export_model(config, model, output_dir, export_format)
