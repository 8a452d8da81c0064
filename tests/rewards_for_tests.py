"""Rewards that give a random tiny model a learning signal (used through task.reward)."""


def starts_with_digit(completion: str, example) -> float:
    """1 when the completion starts with a digit: a random byte model hits it ~4% of the time."""
    return 1.0 if completion[:1].isdigit() else 0.0


def half_bytes_low(completion: str, example) -> float:
    """1 when most characters are ASCII: about half of random byte completions."""
    if not completion:
        return 0.0
    return 1.0 if sum(c.isascii() for c in completion) * 2 > len(completion) else 0.0


def always_raises(completion: str, example) -> float:
    """A broken user reward: every call raises."""
    raise RuntimeError("boom from the test reward")


def raises_on_odd_length(completion: str, example) -> float:
    """Raises for odd-length completions (about half), else as half_bytes_low."""
    if len(completion) % 2:
        raise ValueError(f"cannot score {len(completion)} characters")
    return half_bytes_low(completion, example)


def returns_nan(completion: str, example) -> float:
    """A reward that is not finite."""
    return float("nan")


def returns_text(completion: str, example) -> str:
    """A reward of the wrong type."""
    return "1.0"


def even_problems_right(completion: str, example) -> float:
    """1 for every completion of a problem whose first operand is even: every group settled."""
    return 1.0 if int(example.id.split("x")[0]) % 2 == 0 else 0.0


def half_bytes_low_trl(prompts, completions, **columns):
    """half_bytes_low in TRL's batched form: f(prompts, completions, **columns) -> list."""
    return [half_bytes_low(c, None) for c in completions]
