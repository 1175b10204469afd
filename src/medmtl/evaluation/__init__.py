"""Evaluation: metrics with confidence intervals, statistical tests, evaluation protocols.

The results layout every comparison writes and the report reads (one experiment run dir)::

    RUN_DIR/
      config.yaml                      the resolved experiment config
      results/predictions.csv          one row per (arm, seed, task, split, image):
                                       arm, seed, task, split (val|test), id, group, y_true,
                                       score_<class> for every class of the task (probabilities)
      results/predictions_dense.csv    segmentation/detection tasks listed in experiment.evaluate, one row
                                       per (arm, seed, task, split, image): arm, seed, task, split, id,
                                       group, lesion (0/1), then dice, iou (segmentation) or box_iou,
                                       hit_rate (detection; NaN for images without a lesion)
      results/metrics.json             {arm: {seed: {task: {split: {metric: value}}}}}; segmentation and
                                       detection metrics are per-image means with <metric>_ci_low and
                                       <metric>_ci_high, a 95% bootstrap CI resampling groups
      arms/<arm>/seed<k>/              a training run dir (config.yaml, history.csv,
                                       checkpoints/best.ckpt) for each arm and seed

``y_true`` is the class index; binary tasks have score_<class0>, score_<class1> and the positive
class is the second. Test rows are written once, at the end, from the best (validation-chosen)
checkpoint.
"""
