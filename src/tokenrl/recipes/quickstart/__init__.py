"""The quickstart recipe (``tokenrl quickstart``): a weak base, then full-token GRPO, S-GRPO and
T-SPMO at the same budget, evaluated before and after (docs/quickstart.md).

* :mod:`.plan`: what a run does (:class:`~.plan.QuickstartPlan`), with the RL settings in the
  shipped ``tiny.yaml`` and ``pretrained.yaml`` (ordinary ``tokenrl train`` configs);
* :mod:`.warmup`: the tiny model's supervised warm-up to a weak base;
* :mod:`.run`: the warm-up, then each method in its own ``tokenrl train`` process;
* :mod:`.report`: report.json / report.md / report.png; :mod:`.command`: the CLI options.
"""
