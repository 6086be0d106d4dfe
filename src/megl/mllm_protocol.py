"""What the MLLM baselines are taught to write and how their answers are read: the answer sentence
(also the closed-set candidates at evaluation) and the Fine-tune-CoT target."""
from __future__ import annotations

from megl.data.annotations import MEData
from megl.methods import Method


def mllm_answer(class_name: str) -> str:
    """The answer sentence of the MLLM baselines; also the closed-set candidates at evaluation."""
    return f"the answer is {class_name.replace('_', ' ')}."


def mllm_target(method: Method, class_name: str, rationale: str) -> str:
    """What the MLLM baselines learn to write: the answer, then (Fine-tune-CoT) the rationale."""
    answer = mllm_answer(class_name)
    return answer if method.mllm_target == "answer" else f"{answer} because {rationale}"


def class_names_of(data: MEData) -> list[str]:
    """The class names in class-id order: the candidates of the MLLM's closed-set answer."""
    return [data.id_to_class[c] for c in data.class_ids]
