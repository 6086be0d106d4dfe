"""The method axis of the run matrix: MEGL, its ablations and the baselines, as declarations.

A method is a name plus the loss terms and the SDTG path it switches on (docs/experiment.md §5 maps
them to the paper's rows, docs/baselines.md describes the baselines); the one training loop in
`megl.train` and `megl.objective` read these flags. Adding a method is a few lines here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megl.errors import MEGLError

SaliencyPath = Literal["grad", "detached", "none"]
IMAGE_SPACE_LOSSES = ("cdep",)  # explanation losses computed from the image, not from Grad-CAM


@dataclass(frozen=True)
class Method:
    name: str
    paper_row: str
    description: str
    kind: Literal["classifier", "mllm"] = "classifier"
    visual_loss: str | None = None      # "l1" (MEGL) or a baseline's loss: cdep, haics, res_g, res_l
    consistency: bool = False           # L_dc = KL(Â ‖ Ā) on samples without a human map
    textual: bool = False               # L_textual from SDTG
    saliency_path: SaliencyPath = "none"  # how Â enters SDTG: with gradient, detached, or not at all
    mllm_target: Literal["answer", "answer_rationale"] | None = None

    @property
    def needs_saliency_graph(self) -> bool:
        """Grad-CAM must be differentiable (create_graph) when a loss on Â trains the classifier.
        CDEP's penalty reads contextual decompositions of the image, never Â: no Grad-CAM at all."""
        return (self.visual_loss not in (None, *IMAGE_SPACE_LOSSES) or self.consistency
                or self.saliency_path == "grad")

    @property
    def guidance_keys(self) -> list[str]:
        """Dotted config keys of the weights that put this method's guidance into the loss: what the
        validation-split selection (megl.cell) chooses for it. Empty for the plain classifier and MLLMs."""
        keys = []
        if self.visual_loss == "l1" or self.consistency:
            keys.append("train.lambda_v")
        if self.textual:
            keys.append("train.lambda_t")
        if self.visual_loss not in (None, "l1"):
            keys.append(f"baselines.{self.visual_loss}.weight")
        return keys

    @property
    def writes_text(self) -> bool:
        return self.textual or self.kind == "mllm"


def _m(*args, **kwargs) -> Method:
    return Method(*args, **kwargs)


METHODS: dict[str, Method] = {m.name: m for m in [
    _m("baseline", "-", "classifier with L_pred only"),
    _m("megl", "MEGL", "full MEGL: L1 + consistency + SDTG with gradients into Â",
       visual_loss="l1", consistency=True, textual=True, saliency_path="grad"),
    _m("megl_no_consistency", "Visual+Text", "MEGL without the distribution-consistency loss",
       visual_loss="l1", textual=True, saliency_path="grad"),
    _m("megl_text_only", "Text", "SDTG only: text shapes Â through I ⊙ Â, no visual loss",
       textual=True, saliency_path="grad"),
    _m("megl_visual_only", "Visual", "visual supervision only: L1 + consistency, no SDTG",
       visual_loss="l1", consistency=True),
    _m("megl_visual_l1_only", "Visual (L1 only)", "L1 on annotated samples only: no consistency, no SDTG",
       visual_loss="l1"),
    _m("megl_no_sdtg", "w/o SDTG", "text from the classifier's features only (V = W_I·Z_I)",
       visual_loss="l1", consistency=True, textual=True, saliency_path="none"),
    _m("megl_no_text_supervision", "w/o text→visual", "SDTG sees Â detached: text never shapes Â",
       visual_loss="l1", consistency=True, textual=True, saliency_path="detached"),
]}

# Visual explanation-guided baselines: the plain classifier plus one explanation loss (megl.baselines).
METHODS.update({m.name: m for m in [
    _m("cdep", "CDEP", "contextual-decomposition penalty outside the annotation (Rieger et al. 2020)",
       visual_loss="cdep"),
    _m("haics", "HAICS", "BCE between Â and the annotation (Shen et al. 2021)", visual_loss="haics"),
    _m("res_g", "RES-G", "robust explanation loss, Gaussian imputation (Gao et al. 2022)",
       visual_loss="res_g"),
    _m("res_l", "RES-L", "robust explanation loss, learnable imputation (Gao et al. 2022)",
       visual_loss="res_l"),
]})

# Multimodal-LLM baselines: no separate classifier; the LM reads the frozen encoder's tokens of I.
METHODS.update({m.name: m for m in [
    _m("llava_vqa", "LLaVA", "vision encoder + LM fine-tuned to answer the class (VQA style)",
       kind="mllm", mllm_target="answer"),
    _m("finetune_cot", "LLaVA Fine-Tune-CoT", "vision encoder + LM fine-tuned on answer then rationale",
       kind="mllm", mllm_target="answer_rationale"),
]})

ABLATIONS = ["megl_no_consistency", "megl_text_only", "megl_visual_only", "megl_visual_l1_only",
             "megl_no_sdtg", "megl_no_text_supervision"]
VISUAL_BASELINES = ["baseline", "cdep", "haics", "res_g", "res_l"]
MLLM_BASELINES = [name for name, m in METHODS.items() if m.kind == "mllm"]
MLLM_BACKBONE = "mllm"  # the backbone folder of MLLM runs: they have no classifier backbone


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MEGLError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def describe() -> str:
    """One line per method: the registry as `megl methods` prints it."""
    header = f"{'method':26} {'paper row':20} {'visual':7} {'L_dc':5} {'text':5} {'Â→SDTG':8}  description"
    rows = [header]
    for m in METHODS.values():
        text = "mllm" if m.kind == "mllm" else ("yes" if m.textual else "-")
        rows.append(f"{m.name:26} {m.paper_row:20} {m.visual_loss or '-':7} "
                    f"{'yes' if m.consistency else '-':5} {text:5} {m.saliency_path:8}  {m.description}")
    return "\n".join(rows)
