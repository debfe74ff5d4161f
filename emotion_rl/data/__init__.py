"""The data side (spec 3, 5): environments, episodes, replay, self-play, evaluation, the datamodule."""
