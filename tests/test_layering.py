"""Each module imports only the stages above it (DESIGN.md): parsed with ast, not by convention."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "seqtrain")

# Stage order: a module may import modules of an earlier stage only ("beside" modules share one).
STAGES = [
    {"errors", "opennmt_keys"},
    {"yamltypes"},
    {"config", "aer"},
    {"config_checks"},
    {"presets"},
    {"vocab", "batching"},
    {"tokenizers"},
    {"alignment", "align_words"},
    {"corpus"},
    {"data"},
    {"layers"},
    {"blocks"},
    {"model"},
    {"losses"},
    {"schedules"},
    {"optim", "moving_average"},
    {"checkpoints", "runlog", "runguard", "progress"},
    {"warmstart"},
    {"search_rules"},
    {"decoding", "vocab_update", "ctranslate2_export"},
    {"export"},
    {"translate", "scorers"},
    {"eval_outputs", "ctranslate2_translate"},
    {"alignment_plot"},
    {"evaluate", "score"},
    {"score_bidir"},
    {"trainer"},
    {"import_opennmt"},
    {"cli_parser"},
    {"cli"},
]
STAGE_OF = {name: i for i, names in enumerate(STAGES) for name in names}


def seqtrain_imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "seqtrain":
                yield from (alias.name for alias in node.names)
            elif node.module.startswith("seqtrain."):
                yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("seqtrain."):
                    yield alias.name.split(".")[1]


def test_every_module_has_a_stage():
    modules = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py") and f != "__init__.py"}
    assert modules - set(STAGE_OF) == set(), "add new modules to STAGES"


def test_imports_only_go_up():
    for name in sorted(STAGE_OF):
        path = os.path.join(ROOT, f"{name}.py")
        if not os.path.exists(path):
            continue
        for imported in seqtrain_imports(path):
            assert (
                STAGE_OF[imported] < STAGE_OF[name]
            ), f"seqtrain/{name}.py imports seqtrain.{imported}, a later or same stage"
