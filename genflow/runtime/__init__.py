"""Every decision that depends on which process is running: the device, who writes, which rows
of a batch are this process's, and agreeing on what to do next. One process
(:class:`~genflow.runtime.base.SingleProcess`) or one per device under ``torchrun``
(:class:`~genflow.runtime.distributed.Distributed`); :func:`~genflow.runtime.launch.runtime_for`
picks. Training, sampling and evaluation ask these questions; nothing here knows about them."""
