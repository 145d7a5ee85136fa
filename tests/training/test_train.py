import numpy as np
import pytest
import torch

from conftest import easy_images
from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.model.adapters import build_model
from retfound_hpo.training.inference import predict_proba
from retfound_hpo.training.inputs import train_loader
from retfound_hpo.training.loop import NonFiniteLossError, balanced_nll, fit


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
    import retfound_hpo.training.loop as loop

    steps = []
    real_build = loop.build_optimizer

    def counting_optimizer(*args, **kwargs):
        opt = real_build(*args, **kwargs)
        opt.register_step_post_hook(lambda *a: steps.append(1))
        return opt

    monkeypatch.setattr(loop, "build_optimizer", counting_optimizer)
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
    import retfound_hpo.training.loop as loop

    monkeypatch.setattr(loop, "augment", lambda x, generator: x)  # same pixels either way
    grads = []

    def recording_optimizer(*args, **kwargs):
        opt = real_build(*args, **kwargs)
        opt.register_step_pre_hook(
            lambda o, *a: grads.append(
                torch.cat([p.grad.flatten() for g in o.param_groups for p in g["params"]])
            )
        )
        return opt

    real_build = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", recording_optimizer)
    cfg = ModelConfig(checkpoint=str(mae_checkpoint), input_size=32, drop_path_rate=0.0)
    images = easy_images(48)
    for batch, accum in ((16, 4), (48, 1)):
        torch.manual_seed(0)
        model = build_model(cfg, 8, 16, 0.0)
        options = dict(cfg=TrainConfig(grad_accum_steps=accum, class_balance="none"))
        run(model, epochs=1, train=images, batch_size=batch, **options)
    assert len(grads) == 2
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_validation_loss_averages_per_grade_not_per_image():
    """Three grade-0 images predicted well and one grade-1 image predicted badly: the plain mean
    of the cross-entropy hides the bad grade, the per-grade mean does not."""
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.8, 0.2]])
    grades = np.array([0, 0, 0, 1])
    nll = -np.log([0.9, 0.9, 0.9, 0.2])
    assert balanced_nll(grades, probs) == pytest.approx((nll[:3].mean() + nll[3]) / 2)
    assert balanced_nll(grades, probs) != pytest.approx(nll.mean())


def imbalanced_images(n_major: int = 90, n_minor: int = 10):
    images = easy_images(n_major + n_minor)
    grades = np.array([0] * n_major + [1] * n_minor)
    return type(images)(images.images, grades)


@pytest.mark.parametrize(
    ("balance", "minor_share"), [("sampler", (0.35, 0.65)), ("loss", (0, 0.2))]
)
def test_class_balanced_sampling_draws_rare_grades_as_often(balance, minor_share):
    """train.class_balance: sampler draws each grade about equally often in an epoch; the other
    settings draw every image once (10 % of them grade 1 here)."""
    data = imbalanced_images()
    loader = train_loader(data, 10, TrainConfig(class_balance=balance), 0, 2, torch.device("cpu"))
    drawn = np.concatenate([y.numpy() for _, y in loader])
    assert minor_share[0] <= (drawn == 1).mean() <= minor_share[1]


@pytest.mark.parametrize("balance", ["loss", "sampler", "none"])
def test_class_balanced_loss_weights_grades_by_inverse_frequency(
    mae_checkpoint, monkeypatch, balance
):
    """train.class_balance: loss weights each grade by N / (C x its count) in fit's criterion;
    sampler and none leave the loss unweighted."""
    weights = []
    real = torch.nn.CrossEntropyLoss

    def spy(*args, weight=None, **kwargs):
        weights.append(weight)
        return real(*args, weight=weight, **kwargs)

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", spy)
    data = imbalanced_images()
    run(model_for(mae_checkpoint), epochs=1, train=data, cfg=TrainConfig(class_balance=balance))
    (weight,) = weights
    if balance == "loss":
        expected = [100 / (5 * 90), 100 / (5 * 10), 100 / 5, 100 / 5, 100 / 5]  # absent: count 1
        np.testing.assert_allclose(weight.cpu().numpy(), expected, rtol=1e-6)
    else:
        assert weight is None


def test_random_erasing_option_changes_training_images(mae_checkpoint, monkeypatch):
    """train.random_erasing (RETFound's 0.25): rectangles of noise in a share of the images."""
    import retfound_hpo.training.loop as loop

    erased = []
    real = loop.random_erase

    def spy(x, probability):
        out = real(x, probability)
        erased.append((out != x).flatten(1).any(1).float().mean().item())
        return out

    monkeypatch.setattr(loop, "random_erase", spy)
    basic = run(model_for(mae_checkpoint), epochs=1).history
    assert max(erased) == 0.0  # off by default: not one image touched
    erased.clear()
    strong = run(model_for(mae_checkpoint), epochs=1, cfg=TrainConfig(random_erasing=0.5))
    assert 0.2 < np.mean(erased) < 0.8  # about half the images of each batch
    assert strong.history[0]["train_loss"] != basic[0]["train_loss"]
