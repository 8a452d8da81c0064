"""Rewards that give a random tiny model a learning signal (used through task.reward)."""


def starts_with_digit(completion: str, example) -> float:
    """1 when the completion starts with a digit: a random byte model hits it ~4% of the time."""
    return 1.0 if completion[:1].isdigit() else 0.0


def half_bytes_low(completion: str, example) -> float:
    """1 when most characters are ASCII: about half of random byte completions."""
    if not completion:
        return 0.0
    return 1.0 if sum(c.isascii() for c in completion) * 2 > len(completion) else 0.0
