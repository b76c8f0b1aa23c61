"""gnlorp: run one experiment (or a sweep) of full training, LoRA, GaLore or GradNormLoRP.

Copy one of these (offline, on a CPU, with the shared data beside the checkout):

  # GLUE MRPC, MiniLM, GradNormLoRP rank 8, 3 epochs (~7 min on 2 cores)
  python run.py task=glue/mrpc model=minilm method=gradnormlorp rank=8 task.data_dir=../shared/data/glue_data

  # C4 pre-training of a 20M LLaMA, 300 steps of 8 x 256 tokens, rank 64, fp32 (~10 min on 2 cores)
  python run.py experiment=c4_llama_20m_cpu method=gradnormlorp

  # every method on one task, as a multirun sweep
  python run.py -m method=full,lora,galore,gradnormlorp rank=8 task=glue/rte task.data_dir=../shared/data/glue_data

  # the paper's setting on a GPU (hub data and models)
  python run.py task=glue/mrpc model=roberta-base method=gradnormlorp rank=8 precision=bf16 train.epochs=30 train.batch_size=16

Every run writes results/<run>-<hash>.json (see README); `resume=true` continues an interrupted run.
`python -m gnlorp.schema` lists every setting with its type, default and accepted values.
"""

import hydra
from omegaconf import DictConfig

from gnlorp.schema import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from gnlorp.cli import run_and_exit

    run_and_exit(cfg)


if __name__ == "__main__":
    from gnlorp.cli import main_with_one_line_errors

    main_with_one_line_errors(main, usage=__doc__)
