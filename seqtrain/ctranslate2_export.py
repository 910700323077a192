"""CTranslate2 export: seqtrain's Transformer written with CTranslate2's own specification API.

``ctranslate2.specs.TransformerSpec.from_config`` declares the layout; this module fills it from
the model's variables (no OpenNMT-tf involved):

* pre-norm layers with ReLU FFNs, final layer norms, CTranslate2's ``layer_norm_epsilon`` set to
  ``seqtrain.layers.LAYER_NORM_EPSILON`` (its default would be 1e-6);
* dense kernels are stored ``[in, out]`` by seqtrain and ``[out, in]`` by CTranslate2 (transposed);
  the self-attention Q|K|V kernel is already fused in seqtrain's order, the cross-attention's
  K|V too; queries are scaled by 1/sqrt(head dim) in both;
* embeddings are multiplied by sqrt(d) in both; no position table is written: CTranslate2's
  built-in sinusoidal encoding is ``seqtrain.layers.sinusoidal_encoding`` (1-based positions,
  sin | cos halves, the same frequencies; tests compare the log-probabilities) and has no
  length cap, where a stored table would limit sources and outputs to its rows;
* shared embeddings are the same array in several places (CTranslate2 stores it once); a tied
  output projection is the target embedding plus seqtrain's separate output bias;
* ``alignment_layer`` / ``alignment_heads`` are the guided layer and heads (CTranslate2 also
  averages the first k heads, 0 = all), so ``return_attention`` gives the guided head;
* the vocabularies are seqtrain's id order (``<blank> <s> </s> <unk>`` first), which are also
  CTranslate2's default special tokens; no BOS/EOS is added to the source, as in training.

The export directory also holds ``seqtrain.yml`` (what ``seqtrain translate --engine
ctranslate2`` needs besides the weights: the data section with the vocabulary and SentencePiece
files copied next to it, the model section with the alignment convention, params and infer) so
that it translates without the training configuration or TensorFlow checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import yaml

from seqtrain import checkpoints
from seqtrain.config import to_dict
from seqtrain.errors import SeqtrainError
from seqtrain.layers import LAYER_NORM_EPSILON
from seqtrain.vocab import Vocab

logger = logging.getLogger(__name__)

# What translate --engine ctranslate2 reads from the export directory besides CTranslate2's files.
SETTINGS_FILE = "seqtrain.yml"
INSTALL_HINT = 'pip install -e ".[ctranslate2]" (or pip install ctranslate2)'


def require_ctranslate2():
    """The ``ctranslate2`` module, or a SeqtrainError saying how to install it."""
    try:
        import ctranslate2
    except ImportError as e:
        raise SeqtrainError(f"CTranslate2 is not installed ({e}): {INSTALL_HINT}") from e
    return ctranslate2


def quantization_of(export_format: str) -> str | None:
    """'ctranslate2' -> None (float32 weights as trained); 'ctranslate2_int8' -> 'int8' …"""
    return export_format.partition("_")[2] or None


def _linear(spec, dense) -> None:
    """seqtrain Dense (kernel [in, out]) -> CTranslate2 LinearSpec (weight [out, in])."""
    spec.weight = np.ascontiguousarray(dense.kernel.numpy().T)
    spec.bias = dense.bias.numpy()


def _norm(spec, norm) -> None:
    spec.gamma = norm.gamma.numpy()
    spec.beta = norm.beta.numpy()


def _attention(spec, attention, norm) -> None:
    """Self-attention: linear[0] = fused Q|K|V [3d, d]; cross-attention: linear[0] = Q [d, d],
    linear[1] = fused K|V [2d, d]; linear[-1] = output projection; pre-norm layer norm."""
    if attention.cross:
        _linear(spec.linear[0], attention.query)
        _linear(spec.linear[1], attention.key_value)
    else:
        _linear(spec.linear[0], attention.qkv)
    _linear(spec.linear[-1], attention.output)
    _norm(spec.layer_norm, norm)


def _ffn(spec, ffn, norm) -> None:
    _linear(spec.linear_0, ffn.inner)
    _linear(spec.linear_1, ffn.outer)
    _norm(spec.layer_norm, norm)


def build_spec(model, source_vocab: Vocab, target_vocab: Vocab):
    """A validated ``ctranslate2.specs.TransformerSpec`` holding ``model``'s float32 weights.

    model: ``seqtrain.model.Transformer`` (restored); vocabularies in the model's id order.
    """
    ctranslate2 = require_ctranslate2()
    c = model.config
    spec = ctranslate2.specs.TransformerSpec.from_config(
        c.num_layers,
        c.num_heads,
        pre_norm=True,
        activation=ctranslate2.specs.Activation.RELU,
        alignment_layer=model.alignment_index,  # non-negative: no reliance on -1 handling
        alignment_heads=c.alignment_heads,  # first k heads averaged, 0 = all: same meaning
    )
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = model.source_embedding.numpy()
    for layer_spec, layer in zip(encoder.layer, model.encoder_layers):
        _attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_norm)
        _ffn(layer_spec.ffn, layer.ffn, layer.ffn_norm)
    _norm(encoder.layer_norm, model.encoder_norm)
    target_embedding = model.target_input_embedding().numpy()
    decoder.embeddings.weight = target_embedding
    for layer_spec, layer in zip(decoder.layer, model.decoder_layers):
        _attention(layer_spec.self_attention, layer.self_attention, layer.self_attention_norm)
        _attention(layer_spec.attention, layer.cross_attention, layer.cross_attention_norm)
        _ffn(layer_spec.ffn, layer.ffn, layer.ffn_norm)
    _norm(decoder.layer_norm, model.decoder_norm)
    if model.ties_output:
        decoder.projection.weight = target_embedding
        decoder.projection.bias = model.output_bias.numpy()
    else:
        _linear(decoder.projection, model.output)
    spec.register_source_vocabulary(source_vocab.as_list())
    spec.register_target_vocabulary(target_vocab.as_list())
    try:
        spec.validate()
    except ValueError as e:  # a vocabulary file that does not match the checkpoint
        raise SeqtrainError(f"cannot build the CTranslate2 model: {e}") from e
    return spec


def _settings(config, files: dict) -> dict:
    """The seqtrain.yml of the export: data paths are file names inside the export directory."""
    d = config.data
    data = {"source_vocabulary": files["source.vocab"], "target_vocabulary": files["target.vocab"]}
    for side in ("source", "target"):
        if getattr(d, f"{side}_tokenization"):
            data[f"{side}_tokenization"] = files[f"{side}.model"]
    data["alignment_level"] = d.alignment_level
    plain = to_dict(config)
    return {
        "data": data,
        "model": plain["model"],
        "params": plain["params"],
        "infer": plain["infer"],
    }


def _write(config, model, directory: str, quantization: str | None) -> None:
    src_vocab = Vocab.load(config.data.source_vocabulary)
    tgt_vocab = Vocab.load(config.data.target_vocabulary)
    spec = build_spec(model, src_vocab, tgt_vocab)
    spec.optimize(quantization=quantization)
    os.makedirs(directory)
    spec.save(directory)
    files = {"source.vocab": "source.vocab", "target.vocab": "target.vocab"}
    src_vocab.save(os.path.join(directory, "source.vocab"))
    tgt_vocab.save(os.path.join(directory, "target.vocab"))
    for path, name in (
        (config.data.source_tokenization, "source.model"),
        (config.data.target_tokenization, "target.model"),
    ):
        if path:
            shutil.copyfile(path, os.path.join(directory, name))
            files[name] = name
    with open(os.path.join(directory, SETTINGS_FILE), "w", encoding="utf-8") as f:
        f.write("# seqtrain translate --engine ctranslate2 --model_dir THIS_DIRECTORY\n")
        yaml.safe_dump(_settings(config, files), f, sort_keys=False)


def export_ctranslate2(config, model, output_dir: str, quantization: str | None = None) -> str:
    """Writes the CTranslate2 model of ``model`` to output_dir (replaced as a whole).

    quantization: None (float32), or a CTranslate2 weight type: int8, int16, float16,
    int8_float16 (applied when saving, as ``ct2-*-converter --quantization``).
    """
    if config.model.alignment_context == "full":
        logger.warning(
            "model.alignment_context is full: the guided head's alignments come from a second, "
            "non-causal decoder pass that CTranslate2 does not run; this export translates, but "
            "translate --engine ctranslate2 refuses --with_alignments (use the TensorFlow engine)"
        )
    output_dir = checkpoints.replace_directory(
        output_dir, lambda tmp: _write(config, model, tmp, quantization), "CTranslate2 model"
    )
    logger.info("Exported CTranslate2 model (%s) to %s", quantization or "float32", output_dir)
    return output_dir
