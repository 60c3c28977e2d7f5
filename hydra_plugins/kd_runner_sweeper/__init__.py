"""kd-run's sweeper where Hydra looks for it: Hydra instantiates only plugin classes defined in the
`hydra_plugins` namespace package. The sweeper itself is kd_runner.cli.sweeper."""

from kd_runner.cli import sweeper


class KdSweeper(sweeper.KdSweeper):
    """`hydra/sweeper=kd` (conf/hydra/default.yaml): see kd_runner.cli.sweeper."""
