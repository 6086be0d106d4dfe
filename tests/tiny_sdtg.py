"""Sizes of the tiny random CLIP + Llama that the SDTG tests build (tests/test_sdtg*.py)."""

CLIP_CFG = dict(hidden_size=32, num_layers=1, num_heads=2, patch_size=8, projection_dim=16)
LM_CFG = dict(hidden_size=32, num_layers=1, num_heads=2)
LORA = dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
FEAT_DIM, P, S = 16, 4, 32  # classifier feature width, prefix tokens, image size
