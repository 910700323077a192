# The fixture's Transformer (tools/make_opennmt_fixture.py).
import opennmt


def model(dropout=0.1):
    return opennmt.models.Transformer(
        num_layers=2,
        num_units=32,
        num_heads=2,
        ffn_inner_dim=64,
        dropout=dropout,
        attention_dropout=dropout,
        ffn_dropout=dropout,
    )
