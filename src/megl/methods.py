"""The method axis of the run matrix: MEGL, its ablations and the baselines, as declarations.

A method is a name plus the loss terms and the SDTG path it switches on (docs/experiment.md §5 maps
them to the paper's rows, docs/baselines.md describes the baselines), and the report group it belongs
to; the one training loop (`megl.train`, `megl.objective`) reads these flags, the matrix, the
selection grid, the tables and the claims read the fields and properties below. Adding a method that
combines existing flags is one declaration here (tests/test_methods_registry.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megl.errors import MEGLError

SaliencyPath = Literal["grad", "detached", "none"]
IMAGE_SPACE_LOSSES = ("cdep",)  # explanation losses computed from the image, not from Grad-CAM

# The report groups, in the tables' row order: which tables and claim families a method appears in
# (megl.report.tables.TABLES, megl.report.claims.claim_definitions).
Group = Literal["mllm_baseline", "visual_baseline", "proposed", "ablation"]
GROUPS: tuple[Group, ...] = ("mllm_baseline", "visual_baseline", "proposed", "ablation")

# Which list of `selection.grid` a guidance weight (a dotted config key) takes its candidates from.
GRID_OF_TRAIN_KEY = {"train.lambda_v": "lambda_v", "train.lambda_t": "lambda_t"}
BASELINE_GRID = "weight"  # every baseline's `baselines.<name>.weight`


@dataclass(frozen=True)
class Method:
    name: str
    paper_row: str
    description: str
    group: Group
    kind: Literal["classifier", "mllm"] = "classifier"
    visual_loss: str | None = None      # "l1" (MEGL) or a baseline's loss: cdep, haics, res_g, res_l
    consistency: bool = False           # L_dc = KL(Â ‖ Ā) on samples without a human map
    textual: bool = False               # L_textual from SDTG
    saliency_path: SaliencyPath = "none"  # how Â enters SDTG: with gradient, detached, or not at all
    mllm_target: Literal["answer", "answer_rationale"] | None = None

    @property
    def is_mllm(self) -> bool:
        """No classifier: the LM reads the frozen encoder's tokens and writes the answer (backbone folder
        MLLM_BACKBONE, the matrix's `mllm_methods`)."""
        return self.kind == "mllm"

    @property
    def needs_saliency_graph(self) -> bool:
        """Grad-CAM must be differentiable (create_graph) when a loss on Â trains the classifier.
        CDEP's penalty reads contextual decompositions of the image, never Â: no Grad-CAM at all."""
        return (self.visual_loss not in (None, *IMAGE_SPACE_LOSSES) or self.consistency
                or self.saliency_path == "grad")

    @property
    def guidance(self) -> dict[str, str]:
        """Dotted config key of each weight that puts this method's guidance into the loss → the list of
        `selection.grid` its candidates come from: what the validation-split selection (megl.cell)
        chooses. Empty for the plain classifier and MLLMs."""
        keys = {}
        if self.visual_loss == "l1" or self.consistency:
            keys["train.lambda_v"] = GRID_OF_TRAIN_KEY["train.lambda_v"]
        if self.textual:
            keys["train.lambda_t"] = GRID_OF_TRAIN_KEY["train.lambda_t"]
        if self.visual_loss not in (None, "l1"):
            keys[f"baselines.{self.visual_loss}.weight"] = BASELINE_GRID
        return keys

    @property
    def guidance_keys(self) -> list[str]:
        return list(self.guidance)

    def guidance_points(self, grid: dict) -> list[dict[str, float]]:
        """The candidate settings of the guidance weights from `selection.grid` (zipped lists; empty
        when the method has no guidance weight)."""
        keys = self.guidance_keys
        values = {key: grid[name] for key, name in self.guidance.items()}
        n = {len(v) for v in values.values()}
        if len(n) > 1:
            raise MEGLError(f"selection.grid: lists for {keys} differ in length; they are zipped, so give equal "
                            "lengths")
        return [{k: float(values[k][i]) for k in keys} for i in range(n.pop())] if keys else []

    @property
    def writes_text(self) -> bool:
        return self.textual or self.is_mllm

    @property
    def uses_vision_encoder(self) -> bool:
        """SDTG reads the frozen vision encoder (on I ⊙ Â, or on I for an MLLM)."""
        return self.is_mllm or self.saliency_path != "none"

    def run_record(self) -> dict:
        """The method's entry in run.json: its declaration without the report group (training never reads it)."""
        return {k: v for k, v in vars(self).items() if k != "group"}


def _m(*args, **kwargs) -> Method:
    return Method(*args, **kwargs)


METHODS: dict[str, Method] = {m.name: m for m in [
    _m("baseline", "-", "classifier with L_pred only", "visual_baseline"),
    _m("megl", "MEGL", "full MEGL: L1 + consistency + SDTG with gradients into Â", "proposed",
       visual_loss="l1", consistency=True, textual=True, saliency_path="grad"),
    _m("megl_no_consistency", "Visual+Text", "MEGL without the distribution-consistency loss", "ablation",
       visual_loss="l1", textual=True, saliency_path="grad"),
    _m("megl_text_only", "Text", "SDTG only: text shapes Â through I ⊙ Â, no visual loss", "ablation",
       textual=True, saliency_path="grad"),
    _m("megl_visual_only", "Visual", "visual supervision only: L1 + consistency, no SDTG", "ablation",
       visual_loss="l1", consistency=True),
    _m("megl_visual_l1_only", "Visual (L1 only)", "L1 on annotated samples only: no consistency, no SDTG", "ablation",
       visual_loss="l1"),
    _m("megl_no_sdtg", "w/o SDTG", "text from the classifier's features only (V = W_I·Z_I)", "ablation",
       visual_loss="l1", consistency=True, textual=True, saliency_path="none"),
    _m("megl_no_text_supervision", "w/o text→visual", "SDTG sees Â detached: text never shapes Â", "ablation",
       visual_loss="l1", consistency=True, textual=True, saliency_path="detached"),
]}

# Visual explanation-guided baselines: the plain classifier plus one explanation loss (megl.baselines).
METHODS.update({m.name: m for m in [
    _m("cdep", "CDEP", "contextual-decomposition penalty outside the annotation (Rieger et al. 2020)",
       "visual_baseline",
       visual_loss="cdep"),
    _m("haics", "HAICS", "BCE between Â and the annotation (Shen et al. 2021)", "visual_baseline",
       visual_loss="haics"),
    _m("res_g", "RES-G", "robust explanation loss, Gaussian imputation (Gao et al. 2022)", "visual_baseline",
       visual_loss="res_g"),
    _m("res_l", "RES-L", "robust explanation loss, learnable imputation (Gao et al. 2022)", "visual_baseline",
       visual_loss="res_l"),
]})

# Multimodal-LLM baselines: no separate classifier; the LM reads the frozen encoder's tokens of I.
METHODS.update({m.name: m for m in [
    _m("llava_vqa", "LLaVA", "vision encoder + LM fine-tuned to answer the class (VQA style)", "mllm_baseline",
       kind="mllm", mllm_target="answer"),
    _m("finetune_cot", "LLaVA Fine-Tune-CoT", "vision encoder + LM fine-tuned on answer then rationale",
       "mllm_baseline",
       kind="mllm", mllm_target="answer_rationale"),
]})

MLLM_BACKBONE = "mllm"  # the backbone folder of MLLM runs: they have no classifier backbone


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MEGLError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


def methods_in(*groups: Group) -> list[str]:
    """The registered methods of these groups, group by group in the given order, each in registry order."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise MEGLError(f"unknown method group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
    return [name for group in groups for name, m in METHODS.items() if m.group == group]


def describe() -> str:
    """One line per method: the registry as `megl methods` prints it."""
    header = f"{'method':26} {'paper row':20} {'visual':7} {'L_dc':5} {'text':5} {'Â→SDTG':8}  description"
    rows = [header]
    for m in METHODS.values():
        text = "mllm" if m.is_mllm else ("yes" if m.textual else "-")
        rows.append(f"{m.name:26} {m.paper_row:20} {m.visual_loss or '-':7} "
                    f"{'yes' if m.consistency else '-':5} {text:5} {m.saliency_path:8}  {m.description}")
    return "\n".join(rows)
