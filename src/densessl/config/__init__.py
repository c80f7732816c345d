"""Run configuration: the schema (:mod:`.schema`), typed coercion (:mod:`.coerce`) and
presets (:mod:`.presets`)."""
