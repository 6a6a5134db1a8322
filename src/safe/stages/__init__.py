"""One function per stage of the pipeline: a config dataclass in, a result dataclass out.

===================  ============================================  ======================================
command              function                                      config -> result
===================  ============================================  ======================================
safe verify          :func:`safe.stages.verify.verify`             VerifyConfig -> VerifyResult
safe data synth      :func:`safe.stages.builtin.synth`             SynthStageConfig -> BenchmarkResult
safe base build      :func:`safe.stages.builtin.build_base`        BaseBuildConfig -> BaseResult
safe train           :func:`safe.stages.stage_a.train`             TrainConfig -> StageAResult
safe policy train    :func:`safe.stages.policy.train_policy`       PolicyTrainConfig -> PolicyResult
safe policy distill  :func:`safe.stages.policy.distill_again`      DistillConfig -> PolicyResult
safe eval            :func:`safe.stages.evaluate.evaluate`         EvalConfig -> EvalResult
safe report          :func:`safe.stages.evaluate.report`           ReportConfig -> ReportResult
safe ablate          :func:`safe.stages.ablate.ablate`             AblateConfig -> AblationResult
safe predict         :func:`safe.stages.predict.predict_command`   PredictConfig -> PredictResult
safe serve           :func:`safe.stages.serve.serve`               ServeConfig -> ServeResult
safe demo            :func:`safe.stages.demo.demo`                 DemoConfig -> DemoResult
===================  ============================================  ======================================

Each stage records its result in the run directory's ``metrics.json`` under the result's ``KEY``; the next
stage takes the previous result or reads it back with :meth:`safe.runs.RunDir.read`. Stages import the
library (``models`` ... ``inference``, ``reporting``, ``serve``; docs/design.md has the order) and the built-in
benchmark (``safe.bench``, for the defaults); nothing in the library or the benchmark imports ``safe.stages``.
"""
