import numpy as np
import pytest
import torch

from conftest import easy_images
from retfound_hpo.config import ModelConfig, TrainConfig
from retfound_hpo.model import build_model
from retfound_hpo.train import NonFiniteLossError, fit, predict_proba


def model_for(checkpoint):
    torch.manual_seed(0)  # LoRA and head initialisation draw from the global generator
    return build_model(ModelConfig(checkpoint=str(checkpoint), input_size=32), 8, 16, 0.1)


def run(model, epochs=6, patience=10, lr=5e-3, callback=None, train=None, **options):
    """fit() on the easy task; `options` override or add fit's keywords (cfg, warmup_epochs...)."""
    kwargs = dict(
        epochs=epochs,
        batch_size=16,
        learning_rate=lr,
        weight_decay=0.0,
        patience=patience,
        metric="accuracy",
        cfg=TrainConfig(),
        seed=0,
        on_epoch_end=callback,
    )
    return fit(model, train or easy_images(100), easy_images(50, seed=1), **{**kwargs, **options})


def test_fit_learns_an_easy_task_and_keeps_the_best_epoch(mae_checkpoint):
    model = model_for(mae_checkpoint)
    seen = []
    result = run(model, callback=lambda epoch, row: seen.append((epoch, row["val_accuracy"])))
    assert [e for e, _ in seen] == list(range(1, 7))
    assert result.best_metrics["accuracy"] == max(acc for _, acc in seen) > 40  # chance is 20
    probs = predict_proba(model, easy_images(50, seed=1).images)
    restored = 100 * (probs.argmax(1) == np.arange(50) % 5).mean()
    assert restored == pytest.approx(result.best_metrics["accuracy"])  # best weights, not last


def test_early_stopping_after_patience(mae_checkpoint):
    result = run(model_for(mae_checkpoint), epochs=20, patience=1, lr=1e-9)
    assert result.epochs_run < 20
    assert result.epochs_run - result.best_epoch == 1


def test_same_seed_same_result(mae_checkpoint):
    a = run(model_for(mae_checkpoint), epochs=2).history
    b = run(model_for(mae_checkpoint), epochs=2).history
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_non_finite_loss_stops_training(mae_checkpoint):
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        run(model_for(mae_checkpoint), epochs=2, lr=1e30)


def test_callback_can_stop_the_run(mae_checkpoint):
    class Stop(Exception):
        pass

    def stop_at_2(epoch, row):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run(model_for(mae_checkpoint), epochs=5, callback=stop_at_2)


@pytest.mark.parametrize(("accum", "steps_per_epoch"), [(1, 6), (2, 3), (4, 2)])
def test_gradient_accumulation_steps_less_often(
    mae_checkpoint, monkeypatch, accum, steps_per_epoch
):
    import retfound_hpo.train as train

    steps = []
    real_build = train.build_optimizer

    def counting_optimizer(*args, **kwargs):
        opt = real_build(*args, **kwargs)
        opt.register_step_post_hook(lambda *a: steps.append(1))
        return opt

    monkeypatch.setattr(train, "build_optimizer", counting_optimizer)
    run(model_for(mae_checkpoint), epochs=2, patience=5, cfg=TrainConfig(grad_accum_steps=accum))
    assert len(steps) == 2 * steps_per_epoch  # 100 images, batch 16, last partial batch dropped


def test_label_smoothing_and_warmup_change_training(mae_checkpoint):
    base = run(model_for(mae_checkpoint), epochs=2).history
    smooth = run(model_for(mae_checkpoint), epochs=2, label_smoothing=0.2).history
    warm = run(model_for(mae_checkpoint), epochs=2, warmup_epochs=1).history
    assert smooth[0]["train_loss"] != base[0]["train_loss"]
    assert warm[0]["lr"] > base[0]["lr"]  # still at the peak after one warmup epoch


def test_randaugment_option_changes_training_images(mae_checkpoint):
    basic = run(model_for(mae_checkpoint), epochs=1).history
    strong = run(model_for(mae_checkpoint), epochs=1, cfg=TrainConfig(augment="randaugment"))
    assert strong.history[0]["train_loss"] != basic[0]["train_loss"]


def test_logged_training_loss_averages_the_images_used(mae_checkpoint):
    # 100 images at batch 16: the last 4 are dropped. A model that has not moved (learning rate
    # ~0, near-zero head) gives every image cross-entropy ~log 5: so must the logged mean.
    model = model_for(mae_checkpoint)
    (row,) = run(model, epochs=1, lr=1e-12, cfg=TrainConfig(class_balance="none")).history
    assert row["train_loss"] == pytest.approx(np.log(5), abs=2e-3)


def test_a_partial_accumulation_group_is_averaged_over_its_own_batches(mae_checkpoint, monkeypatch):
    """Three batches with grad_accum_steps 4 make one step: its gradient is the mean over the
    three batches, the same as one batch of all their images."""
    import retfound_hpo.train as train

    monkeypatch.setattr(train, "augment", lambda x, generator: x)  # same pixels either way
    grads = []

    def recording_optimizer(*args, **kwargs):
        opt = real_build(*args, **kwargs)
        opt.register_step_pre_hook(
            lambda o, *a: grads.append(
                torch.cat([p.grad.flatten() for g in o.param_groups for p in g["params"]])
            )
        )
        return opt

    real_build = train.build_optimizer
    monkeypatch.setattr(train, "build_optimizer", recording_optimizer)
    cfg = ModelConfig(checkpoint=str(mae_checkpoint), input_size=32, drop_path_rate=0.0)
    images = easy_images(48)
    for batch, accum in ((16, 4), (48, 1)):
        torch.manual_seed(0)
        model = build_model(cfg, 8, 16, 0.0)
        options = dict(cfg=TrainConfig(grad_accum_steps=accum, class_balance="none"))
        run(model, epochs=1, train=images, batch_size=batch, **options)
    assert len(grads) == 2
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
