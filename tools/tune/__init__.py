"""`python -m tools.tune`: a grid search over the recipe's sampling settings, picking the point whose captions
best match human reference captions (ROUGE), as LAION-COCO chose its settings to match MS-COCO style."""
