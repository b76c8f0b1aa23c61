"""Published numbers (../shared/design/PAPER_NUMBERS.md; APOLLO's from its project page, zhuhanqing/APOLLO
docs/index.html) and the GLUE / C4 facts the tables are laid out by. Each published memory figure says what it
counts (MEMORY_DEFINITION): the papers count different things."""

from __future__ import annotations

from dataclasses import dataclass

from ..results import C4_PAPER_SIZES  # Table 2's sizes (and GLUE's HEADLINE metrics) group the runs: results.py


GLUE_TASKS = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp", "wnli")  # GaLore Table 4's order, + WNLI
TASK_LABEL = {"cola": "CoLA", "stsb": "STS-B", "mrpc": "MRPC", "rte": "RTE", "sst2": "SST-2", "mnli": "MNLI",
              "qnli": "QNLI", "qqp": "QQP", "wnli": "WNLI"}
METRIC_LABEL = {"matthews_correlation": "Matthews corr.", "pearson": "Pearson", "f1": "F1", "accuracy": "accuracy"}
# GaLore Table 4 averages these eight (no WNLI); our avg column follows it
AVG_EXCLUDED = ("wnli",)
PAPER_AVG_TASKS = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp")


@dataclass(frozen=True)


class PaperRow:
    method: str
    rank: int | None
    precision: str | None   # None: matches any of ours; "8bit": only our 8-bit rows
    source: str
    values: dict            # column -> published cell text or number
    avg: float | None = None


_T4 = ("cola", "stsb", "mrpc", "rte", "sst2", "mnli", "qnli", "qqp")
PAPER_GLUE = (
    PaperRow("full", None, None, "GaLore Table 4", dict(zip(_T4, (62.24, 90.92, 91.30, 79.42, 94.57, 87.18, 92.33, 92.28))), 86.28),
    PaperRow("galore", 4, None, "GaLore Table 4", dict(zip(_T4, (60.35, 90.73, 92.25, 79.42, 94.04, 87.00, 92.24, 91.06))), 85.89),
    PaperRow("lora", 4, None, "GaLore Table 4", dict(zip(_T4, (61.38, 90.57, 91.07, 78.70, 92.89, 86.82, 92.18, 91.29))), 85.61),
    PaperRow("galore", 8, None, "GaLore Table 4", dict(zip(_T4, (60.06, 90.82, 92.01, 79.78, 94.38, 87.17, 92.20, 91.11))), 85.94),
    PaperRow("lora", 8, None, "GaLore Table 4", dict(zip(_T4, (61.83, 90.80, 91.90, 79.06, 93.46, 86.94, 92.25, 91.22))), 85.93),
    PaperRow("gradnormlorp", 8, None, "GradNormLoRP abstract", {}, 80.65),
    PaperRow("lora", 8, None, "GradNormLoRP abstract", {}, 79.23),
)

SIZE_LABEL = {"llama_60m": "60M", "llama_130m": "130M", "llama_350m": "350M", "llama_1b": "1B", "llama_7b": "7B"}
PAPER_RANK = {"llama_60m": 128, "llama_130m": 256, "llama_350m": 256, "llama_1b": 512, "llama_7b": 1024}
_T2 = C4_PAPER_SIZES
FIRA_C4 = "Fira paper, arXiv 2410.01623; table unchecked"       # source labels of the rows below PAPER_C4's GaLore
APOLLO_C4 = "APOLLO paper, arXiv 2412.05270; table unchecked"   # rows (why unchecked: there)
# What each source's memory figures count. GaLore's Tables 2, 3 and 11: weights + optimizer states (Table 11: the whole
# measured training memory); its Table 6 and its savings (abstract, §5.5): optimizer states alone. Fira (Chen et al.
# 2024) counts parameters + gradients + optimizer states; no Fira memory figure is tabulated here. APOLLO: optimizer
# states only (its LLaMA-7B table lists 8-bit Adam at 13G where GaLore Table 3 lists 26G: the same run without weights).
MEMORY_DEFINITION = {
    "GaLore Table 2": "weights + optimizer states (BF16 estimate)",
    "GaLore Table 3": "weights + optimizer states",
    "GaLore Table 6": "optimizer states only (BF16)",
    "GaLore abstract": "optimizer states only, saving vs BF16 Adam",
    "GaLore §5.5": "optimizer states only, saving vs BF16 Adam",
    "GradNormLoRP abstract": "optimizer memory, saving vs BF16 Adam (read as optimizer states, as in GaLore's abstract)",
    "APOLLO LLaMA-7B table": "optimizer states only (projected moments of the target matrices)",
    FIRA_C4: "parameters + gradients + optimizer states",
    APOLLO_C4: "optimizer states only",
}
PAPER_C4 = (  # GaLore Table 2: validation perplexity (weights + optimizer-state memory estimate, BF16)
    PaperRow("full", None, None, "GaLore Table 2", dict(zip(_T2, ("34.06 (0.36G)", "25.08 (0.76G)", "18.80 (2.06G)", "15.56 (7.80G)")))),
    PaperRow("galore", None, None, "GaLore Table 2", dict(zip(_T2, ("34.88 (0.24G)", "25.36 (0.52G)", "18.95 (1.22G)", "15.64 (4.38G)")))),
    PaperRow("lora", None, None, "GaLore Table 2", dict(zip(_T2, ("34.99 (0.36G)", "33.92 (0.80G)", "25.58 (1.76G)", "19.21 (6.17G)")))),
    # Each method from its own paper's C4 table (validation perplexity at 60M / 130M / 350M / 1B, GaLore Table 2's
    # recipe; ranks and scales of their scripts: gnlorp/conf/method/{fira,apollo,apollo_mini}.yaml). The figures are
    # issue 28's quotes: neither repository's README or project page (xichen-fy/Fira@5c28b13,
    # zhuhanqing/APOLLO@76b3472 docs/index.html, which tabulates LLaMA-7B only) has this table, and the papers were
    # not at hand, so the table numbers are unchecked: the labels name the paper only. APOLLO's table copies Fira's row
    # with 17.03 at 350M where Fira's own paper has 16.85 (issue 28); Fira's row here is its own paper's. No memory
    # figures: none were checked (what each paper counts: MEMORY_DEFINITION).
    PaperRow("fira", None, None, FIRA_C4, dict(zip(_T2, (31.06, 22.73, 16.85, 14.31)))),
    PaperRow("apollo", None, None, APOLLO_C4, dict(zip(_T2, (31.55, 22.94, 16.85, 14.20)))),
    PaperRow("apollo_mini", None, None, APOLLO_C4, dict(zip(_T2, (31.93, 23.53, 17.18, 14.17)))),
)
PAPER_C4_RANK_ROW = dict(zip(_T2, ("128", "256", "256", "512")))
PAPER_C4_TOKENS_ROW = dict(zip(_T2, ("1.1B", "2.2B", "6.4B", "13.1B")))
STEPS_7B = (40000, 80000, 120000, 150000)
PAPER_7B = (  # GaLore Table 3: LLaMA-7B validation perplexity at 40K / 80K / 120K / 150K steps
    PaperRow("galore", None, "8bit", "GaLore Table 3 (r=1024, 18G weights + states)",
             dict(zip(STEPS_7B, (17.94, 15.39, 14.95, 14.65)))),
    PaperRow("full", None, "8bit", "GaLore Table 3 (26G weights + states)", dict(zip(STEPS_7B, (18.09, 15.47, 14.83, 14.61)))),
)
TOKENS_7B = dict(zip(STEPS_7B, ("5.2B", "10.5B", "15.7B", "19.7B")))

# GaLore Table 6: optimizer states (GB, BF16) at 60M / 130M / 350M / 1B
PAPER_MEMORY = {
    "full": dict(zip(_T2, (0.23, 0.51, 1.37, 5.20))),
    "galore": dict(zip(_T2, (0.13, 0.28, 0.54, 1.78))),
    "lora": dict(zip(_T2, (0.17, 0.37, 0.72, 2.38))),
}
# Published claims of optimizer-memory saving against BF16 Adam: (label, source, value, method, state bits); what
# each counts: MEMORY_DEFINITION[source]
MEMORY_CLAIMS = (
    ("GaLore, 16-bit, LLaMA-7B r=1024: optimizer-state saving", "GaLore §5.5", 0.655, "galore", 16),
    ("8-bit GaLore: optimizer memory reduced by up to", "GaLore abstract", 0.825, "galore", 8),
    ("8-bit GradNormLoRP: optimizer memory reduced by up to", "GradNormLoRP abstract", 0.895, "gradnormlorp", 8),
)
# Published optimizer-state sizes at LLaMA-7B: (label, source, GB, method, state bits, rank). APOLLO's C4 LLaMA-7B
# table (project page, zhuhanqing/APOLLO@76b3472 docs/index.html, "Pre-training LLaMA 7B on C4 dataset for 150K
# steps"): 8-bit Adam 13G, 8-bit GaLore 4.9G, APOLLO 1.6G, APOLLO-Mini 0.0G (rank 256 for APOLLO, its README's 7B
# setting; 1.6G is APOLLO's, not APOLLO-Mini's). Their BF16 projected moments of the target matrices alone come to
# 1.62 GB at rank 256: no projector (redrawn from its seed) and no embedding, head or norm states.
MEMORY_GB_CLAIMS = (
    ("APOLLO, LLaMA-7B r=256: optimizer memory", "APOLLO LLaMA-7B table", 1.6, "apollo", 16, 256),
    ("APOLLO-Mini, LLaMA-7B: optimizer memory", "APOLLO LLaMA-7B table", 0.0, "apollo_mini", 16, None),
)
