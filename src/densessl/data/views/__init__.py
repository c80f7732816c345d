"""Training views: multi-crop sampling with boxes and flips (:mod:`.multicrop`) and
photometric augmentation (:mod:`.photometric`)."""
