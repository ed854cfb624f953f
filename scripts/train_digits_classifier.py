"""Train the digits classifier that genflow's metrics use as a feature space.

Fixed split: scikit-learn's digits, ``train_test_split(test_size=0.25, stratify=labels,
random_state=0)``. Writes ``genflow/assets/digits_classifier.safetensors`` and a card
(``digits_classifier.json``) with its sha256, test accuracy and how it was trained.

    python scripts/train_digits_classifier.py
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from genflow.eval.metrics import DIGITS_CLASSIFIER, DIGITS_CLASSIFIER_CARD, DigitsClassifier
from genflow.storage import sha256_file

EPOCHS, BATCH, LR, SEED = 40, 64, 2e-3, 0


def main() -> None:
    torch.manual_seed(SEED)
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 8 - 1
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.25, stratify=labels.numpy(), random_state=SEED)
    train_x, train_y, test_x, test_y = images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(train_x)).split(BATCH):
            # light augmentation: one-pixel shifts, so features respond to shape, not position
            shift = tuple(torch.randint(-1, 2, (2,)).tolist())
            x = torch.roll(train_x[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(DIGITS_CLASSIFIER))
    card = {
        "sha256": sha256_file(DIGITS_CLASSIFIER),
        "test_accuracy": round(accuracy, 4),
        "split": "sklearn digits, train_test_split(test_size=0.25, stratify=labels, random_state=0)",
        "train_images": len(train_idx),
        "test_images": len(test_idx),
        "epochs": EPOCHS,
        "feature_dim": DigitsClassifier.FEATURES,
        "script": "scripts/train_digits_classifier.py",
    }
    DIGITS_CLASSIFIER_CARD.write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
