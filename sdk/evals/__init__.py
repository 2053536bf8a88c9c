"""Long-context fidelity evals: needle-in-a-haystack (passkey retrieval) and Task Haystack (Lifelong ICL).

`niah` and `haystack` score one loaded model; `compare` runs one suite on several variants of a model (dense vs
InfLLM v2 sparse budgets, each quant, each format) and reports each variant's retention relative to the first;
`report_section` writes that comparison as a report section; `retention` is the planner's floor check.
"""
