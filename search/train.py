"""ArcFace training of a backbone built from a spec, and embedding of face images.

ArcFace (J. Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019) with the thesis' settings for binary networks: scale s = 16 (larger scales made
BinaryFaceNet unstable) and margin m = 0.5, SGD with momentum 0.9 and decoupled weight decay
5e-4, learning rate 0.01 multiplied by 0.1 after 45 %, 75 % and 90 % of the epochs (epochs
9, 15 and 18 of 20 in the thesis).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from search.data import normalize

__all__ = ["TrainConfig", "TrainResult", "embed", "make_arcface_head", "train_arcface"]

log = logging.getLogger(__name__)

# Fractions of the run after which the learning rate is multiplied by 0.1.
LR_DECAY_POINTS = (0.45, 0.75, 0.9)


@dataclass(frozen=True)
class TrainConfig:
    """ArcFace training settings; ``epochs`` may be fractional for quick screening runs."""

    epochs: float = 1.0
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scale: float = 16.0
    margin: float = 0.5
    flip: bool = True
    vlr_sizes: tuple[int, ...] = ()
    vlr_probability: float = 0.5
    seed: int = 0


@dataclass
class TrainResult:
    """Loss per epoch and the number of optimizer steps taken."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0


def make_arcface_head(n_classes: int, scale: float, margin: float) -> Any:
    """Return a Keras layer mapping (embedding, label) to ArcFace logits.

    The layer L2-normalises embeddings and class weights, so logits are ``scale * cos``;
    the target class gets ``cos(theta + margin)``, falling back to ``cos(theta) - margin *
    sin(margin)`` when ``theta + margin`` would pass pi (the monotonic form InsightFace uses).
    """
    import tensorflow as tf

    cos_m, sin_m = math.cos(margin), math.sin(margin)
    threshold = math.cos(math.pi - margin)
    fallback = math.sin(math.pi - margin) * margin

    class ArcFaceLogits(tf.keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(
                name="class_centres",
                shape=(int(input_shape[0][-1]), n_classes),
                initializer="glorot_uniform",
                trainable=True,
            )

        def call(self, inputs: Any) -> Any:
            embeddings, labels = inputs
            cosine = tf.matmul(tf.math.l2_normalize(embeddings, axis=1), tf.math.l2_normalize(self.kernel, axis=0))
            cosine = tf.clip_by_value(cosine, -1.0 + 1e-7, 1.0 - 1e-7)
            sine = tf.sqrt(1.0 - tf.square(cosine))
            with_margin = cosine * cos_m - sine * sin_m
            with_margin = tf.where(cosine > threshold, with_margin, cosine - fallback)
            one_hot = tf.one_hot(tf.cast(labels, tf.int32), n_classes)
            return scale * (one_hot * with_margin + (1.0 - one_hot) * cosine)

    return ArcFaceLogits(name="arcface")


def train_arcface(
    backbone: Any,
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    config: TrainConfig = TrainConfig(),
    *,
    on_epoch_end: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``backbone`` (image -> embedding) with ArcFace on uint8 RGB ``images``.

    ``on_epoch_end(epoch, loss)`` runs after each epoch (for reporting to a study; it may
    raise to stop training). Fractional epochs train on that share of one pass.
    """
    import tensorflow as tf

    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} != {len(labels)}")
    if len(images) == 0:
        raise ValueError("no training images")
    tf.keras.utils.set_random_seed(config.seed)

    steps_per_epoch = max(1, math.ceil(len(images) / config.batch_size))
    n_epochs = max(1, math.ceil(config.epochs))
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    boundaries = sorted({max(1, round(point * total_steps)) for point in LR_DECAY_POINTS if round(point * total_steps) < total_steps})
    values = [config.learning_rate * 0.1**index for index in range(len(boundaries) + 1)]
    schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values) if boundaries else config.learning_rate
    optimizer = tf.keras.optimizers.SGD(
        learning_rate=schedule, momentum=config.momentum, weight_decay=config.weight_decay
    )

    head = make_arcface_head(n_classes, config.scale, config.margin)
    dataset = _training_dataset(images, labels, config)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(batch_images: Any, batch_labels: Any) -> Any:
        with tf.GradientTape() as tape:
            embeddings = backbone(batch_images, training=True)
            # A backbone that ends in a 1x1 map (no output head) gives (N, 1, 1, D).
            embeddings = tf.reshape(embeddings, (-1, int(np.prod(embeddings.shape[1:]))))
            logits = head([embeddings, batch_labels])
            loss = loss_fn(batch_labels, logits)
        variables = backbone.trainable_variables + head.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    result = TrainResult()
    iterator = iter(dataset.repeat())
    for epoch in range(n_epochs):
        steps = min(steps_per_epoch, total_steps - result.steps)
        losses = []
        bar = _progress_bar(steps, f"epoch {epoch + 1}/{n_epochs}", progress)
        for _ in range(steps):
            batch_images, batch_labels = next(iterator)
            losses.append(float(train_step(batch_images, batch_labels)))
            result.steps += 1
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        epoch_loss = float(np.mean(losses))
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"ArcFace loss became {epoch_loss} in epoch {epoch + 1}")
        result.losses.append(epoch_loss)
        log.debug("epoch %d/%d: loss %.4f", epoch + 1, n_epochs, epoch_loss)
        recalibrate_batch_norm(backbone, images, batch_size=config.batch_size, seed=config.seed)
        if on_epoch_end is not None:
            on_epoch_end(epoch, epoch_loss)
    return result


def recalibrate_batch_norm(model: Any, images: np.ndarray, *, batch_size: int = 64, batches: int = 8, seed: int = 0) -> None:
    """Set every BatchNorm's moving statistics to their average over ``batches`` training batches.

    With Keras' momentum of 0.99 the moving statistics need hundreds of steps to follow the
    weights, so a candidate trained for a few epochs would be scored with statistics of its
    initial weights. Recomputing them with the final weights fixes that and changes nothing
    else (the model has no other layer that behaves differently in training mode).
    """
    import tensorflow as tf

    layers = [layer for layer in _all_layers(model) if isinstance(layer, tf.keras.layers.BatchNormalization)]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    order = np.random.default_rng(seed).permutation(len(images))
    try:
        for step in range(min(batches, max(1, len(images) // batch_size))):
            # A cumulative average: batch k enters with weight 1 / (k + 1).
            for layer in layers:
                layer.momentum = step / (step + 1)
            batch = images[order[step * batch_size : (step + 1) * batch_size]]
            model(tf.constant(normalize(batch)), training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in model.layers:
        layers.extend(_all_layers(layer) if hasattr(layer, "layers") and layer.layers else [layer])
    return layers


def embed(model: Any, images: np.ndarray, *, batch_size: int = 128, flip: bool = False) -> np.ndarray:
    """Return L2-normalised embeddings of uint8 RGB ``images``, flip-averaged when ``flip``."""
    from search.evaluate import embed_keras

    return embed_keras(model, images, flip=flip, batch_size=batch_size)


def _training_dataset(images: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Any:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    dataset = dataset.shuffle(len(images), seed=config.seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(config.batch_size, drop_remainder=len(images) >= config.batch_size)

    if config.vlr_sizes:
        from search.vlr import tf_random_degrade

        degrade = tf_random_degrade(config.vlr_sizes, probability=config.vlr_probability, seed=config.seed)
        dataset = dataset.map(lambda x, y: (degrade(x), y), num_parallel_calls=tf.data.AUTOTUNE)

    def augment(batch: Any, batch_labels: Any) -> Any:
        batch = tf.cast(batch, tf.float32)
        if config.flip:
            mirrored = tf.random.uniform([tf.shape(batch)[0], 1, 1, 1], seed=config.seed) < 0.5
            batch = tf.where(mirrored, tf.reverse(batch, axis=[2]), batch)
        return (batch - 127.5) / 128.0, batch_labels

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _progress_bar(total: int, description: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False)

