"""What the MLLM baselines are taught to write and how their answers are read: the answer sentence
(also the closed-set candidates at evaluation), the Fine-tune-CoT target, and how an answer is parsed
and scored at prediction (docs/metrics.md)."""
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


def answer_has_eos(method) -> bool:
    """llava_vqa's training target ends with EOS after the answer; Fine-tune-CoT's goes on ' because …'."""
    return method.mllm_target == "answer"


def closed_set_protocol(method) -> str:
    eos = " + EOS" if answer_has_eos(method) else ""
    return (f"closed-set: argmax over the classes of log p(' the answer is <class>.'{eos} | visual prefix, prompt), "
            "summed over those tokens")


def rationale_part(text: str) -> str:
    """Fine-tune-CoT writes "the answer is X. because R": the text metrics score R alone."""
    return text.split(" because ", 1)[1].strip() if " because " in text else text.strip()


def parse_answer(answer: str, class_names: list[str]) -> int:
    """Index of the class named after "the answer is"; the longest matching name wins; -1 if none."""
    text = " ".join(answer.lower().replace("_", " ").split())
    head = text.split("the answer is", 1)[-1].split(".")[0].strip()
    matches = [i for i, name in enumerate(class_names) if head.startswith(name.lower().replace("_", " "))]
    if not matches:
        return -1
    return max(matches, key=lambda i: len(class_names[i]))
