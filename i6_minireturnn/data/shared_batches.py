"""Batches from a worker process through shared memory (``data_worker_type = "shared_memory"``).

A process forked for the epoch loads and collates the batches and writes their tensors into shared-memory slots; the
training process receives one small message per batch and makes tensor views of the slot. The training process then
runs no loader code at all: a loader thread takes Python's lock from the training loop several times per batch, which
costs a training loop whose steps are short (kernel launches) up to a tenth of its speed (benchmarks/
loader_handovers.py). With CUDA each slot is page-locked once (``cudaHostRegister``), so the copies to the GPU are
asynchronous as from pinned memory.

Slots are memory files (``memfd``) the worker creates at the size a batch needs (with headroom) and hands to the
training process with the batch. A slot goes back to the worker once no tensor of its batch is referenced any more and
(on CUDA) the copies queued from it have finished: an event is recorded when its last view is freed. Where every slot
is still held by the consumer (code that keeps batches), the batch comes through the pipe instead, so the worker never
waits for memory the consumer keeps.
"""

from __future__ import annotations

import collections
import ctypes
import math
import mmap
import multiprocessing
import os
import pickle
import signal
import traceback
import weakref
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import torch

from ..errors import DataError
from .collate import Batch

_INLINE = -1  # a token that asks the worker to send the next batch through the pipe
_ALIGN = 64  # byte alignment of each tensor in a slot
_GRAIN = 1 << 20  # slot sizes are whole MiB, with a quarter headroom over the batch that needed a new one

# (key, dtype name, shape, offset in the slot) of each tensor of a batch
Layout = List[Tuple[str, str, Tuple[int, ...], int]]


def read_through_shared_memory(batches: Callable[[], Iterator[Batch]], *, prefetch: int, pin: bool) -> Iterator[Batch]:
    """The batches that `batches()` gives when called in a forked worker process, in order; `prefetch` batches are
    loaded ahead; `pin`: page-lock the slots for asynchronous copies to the GPU."""
    ready, worker_end = multiprocessing.Pipe(duplex=True)  # a socket pair: it also carries the slots' descriptors
    tokens_out, tokens_in = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(
        target=_worker, args=(batches, worker_end, tokens_out), name="data-shared-memory", daemon=True
    )
    process.start()
    worker_end.close()
    tokens_out.close()
    slots = _ParentSlots(pin)
    try:
        yield from _receive(ready, tokens_in, slots, process, max(1, prefetch))
    finally:
        ready.close()
        tokens_in.close()  # the worker ends at its next token or message
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
        slots.close()


def _receive(ready, tokens, slots: _ParentSlots, process, ahead: int) -> Iterator[Batch]:
    outstanding = 0  # tokens the worker has not answered yet
    while True:
        slots.collect_released()
        while outstanding < ahead:
            token = slots.take_free()
            if token is None:
                if outstanding > 0:
                    break
                # nothing in flight and no free slot: wait for a queued copy, else every slot is held by the consumer
                token = slots.wait_for_pending()
                if token is None:
                    token = _INLINE
            try:
                tokens.send(token)
            except BrokenPipeError:  # the worker ended: its error message (or the end of its pipe) tells why
                break
            outstanding += 1
        try:
            message = ready.recv()
        except EOFError:
            process.join(timeout=5)
            raise DataError(f"The data worker process ended unexpectedly ({_exit_reason(process.exitcode)})") from None
        kind = message[0]
        if kind == "end":
            return
        if kind == "error":
            raise _worker_error(message[1], message[2])
        outstanding -= 1
        if kind == "inline":
            _, arrays, plain, dataset_name = message
            batch = Batch(plain, dataset_name=dataset_name)
            batch.update((key, torch.from_numpy(array)) for key, array in arrays.items())
            yield batch
            continue
        _, slot, size, layout, plain, dataset_name = message
        if size:  # the worker made this slot anew at `size` bytes: its descriptor follows
            try:
                fd = recv_handle(ready)
            except (EOFError, OSError, RuntimeError):
                process.join(timeout=5)
                raise DataError(
                    f"The data worker process ended unexpectedly ({_exit_reason(process.exitcode)})"
                ) from None
            slots.replace(slot, fd, size)
        yield slots.batch(slot, layout, plain, dataset_name)


class _ParentSlots:
    """The training process's side of the slots: their mappings (page-locked with `pin`) and which are free."""

    def __init__(self, pin: bool):
        self.pin = pin and torch.cuda.is_available()
        self.maps: Dict[int, mmap.mmap] = {}
        self.anchors: Dict[int, Any] = {}  # a ctypes view of each mapping: its address, for (un)registering
        self.free: List[int] = []
        self.count = 0  # slots handed out so far (numbers 0..count-1)
        self.held: Set[int] = set()  # slots whose batch the consumer still references
        self.pending: Deque[Tuple[int, Optional[torch.cuda.Event]]] = collections.deque()  # released, copies queued
        self.closed = False

    def take_free(self) -> Optional[int]:
        """A free slot for the worker: an existing one, or a new number while there are few (the worker allocates
        it); None where all are in use."""
        if self.free:
            return self.free.pop()
        if self.count < 4:  # two ahead, one in use, one whose copies finish
            self.count += 1
            return self.count - 1
        return None

    def collect_released(self) -> None:
        """Frees released slots whose queued copies finished."""
        while self.pending and (self.pending[0][1] is None or self.pending[0][1].query()):
            self.free.append(self.pending.popleft()[0])

    def wait_for_pending(self) -> Optional[int]:
        """Waits for the oldest released slot's copies; None where no slot is released (all held)."""
        if not self.pending:
            return None
        slot, event = self.pending.popleft()
        if event is not None:
            event.synchronize()
        return slot

    def replace(self, slot: int, fd: int, size: int) -> None:
        """Maps the new memory file of `slot` (the old mapping, free, is released)."""
        try:
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._unmap(slot)
        self.maps[slot] = mapping
        anchor = (ctypes.c_char * size).from_buffer(mapping)
        self.anchors[slot] = anchor
        if self.pin:
            _check_cuda(torch.cuda.cudart().cudaHostRegister(ctypes.addressof(anchor), size, 0), "cudaHostRegister")

    def batch(self, slot: int, layout: Layout, plain: Dict[str, Any], dataset_name: Optional[str]) -> Batch:
        """The batch in `slot`: tensors viewing the slot; the slot is released when the last of them is freed."""
        owner = (ctypes.c_char * len(self.maps[slot])).from_buffer(self.maps[slot])  # one per batch: its lifetime
        data = np.frombuffer(owner, dtype=np.uint8)
        batch = Batch(plain, dataset_name=dataset_name)
        for key, dtype, shape, offset in layout:
            count = math.prod(shape)
            array = data[offset : offset + count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
            batch[key] = torch.from_numpy(array)
        self.held.add(slot)
        weakref.finalize(owner, self._released, slot)
        return batch

    def _released(self, slot: int) -> None:
        # runs where the batch's last tensor is freed: the copies from it are queued on the current stream
        self.held.discard(slot)
        event = None
        if self.pin:
            event = torch.cuda.Event()
            event.record()
        if self.closed:
            self._close_slot(slot, event)
        else:
            self.pending.append((slot, event))

    def close(self) -> None:
        """Releases the slots the consumer no longer holds; the others are released with their last tensor."""
        self.closed = True
        for _, event in self.pending:
            if event is not None:
                event.synchronize()
        self.pending.clear()
        self.free.clear()
        for slot in list(self.maps):
            if slot not in self.held:
                self._unmap(slot)

    def _close_slot(self, slot: int, event: Optional[torch.cuda.Event]) -> None:
        if event is not None:
            event.synchronize()
        self._unmap(slot)

    def _unmap(self, slot: int) -> None:
        """Unregisters `slot` and drops this object's references: the memory is unmapped with the last one (a batch
        whose last tensor is being freed still exports it while its finalizer runs, so no explicit close)."""
        mapping = self.maps.pop(slot, None)
        if mapping is None:
            return
        anchor = self.anchors.pop(slot)
        if self.pin:
            torch.cuda.cudart().cudaHostUnregister(ctypes.addressof(anchor))


def _check_cuda(result: Any, what: str) -> None:
    code = int(getattr(result, "value", result))
    if code != 0:
        raise RuntimeError(f"{what} failed with CUDA error {code}")


# ---- the worker process --------------------------------------------------------------------------------------------


def _worker(batches: Callable[[], Iterator[Batch]], ready, tokens) -> None:
    # The training process decides about stop signals; the worker ends when its pipes close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = 0
    try:
        maps: Dict[int, mmap.mmap] = {}
        for batch in batches():
            token = tokens.recv()
            layout, plain, tensors, nbytes = _layout(batch)
            dataset_name = getattr(batch, "dataset_name", None)
            if token == _INLINE:  # by value: numpy arrays pickle as bytes (tensors would need this process alive)
                arrays = {key: tensor.numpy() for (key, _, _, _), tensor in zip(layout, tensors)}
                ready.send(("inline", arrays, plain, dataset_name))
                continue
            size = 0
            if token not in maps or len(maps[token]) < nbytes:
                size = max(_GRAIN, -(-int(nbytes * 1.25) // _GRAIN) * _GRAIN)
                fd = os.memfd_create(f"batch-slot-{token}", os.MFD_CLOEXEC)
                os.ftruncate(fd, size)
                if token in maps:
                    maps[token].close()
                maps[token] = mmap.mmap(fd, size)
            slot = np.frombuffer(maps[token], dtype=np.uint8)
            for (_, _, _, offset), tensor in zip(layout, tensors):
                source = tensor.numpy().reshape(-1).view(np.uint8)
                slot[offset : offset + source.size] = source
            del slot
            ready.send(("slot", token, size, layout, plain, dataset_name))
            if size:
                send_handle(ready, fd, os.getppid())
                os.close(fd)
        ready.send(("end",))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the training process closed its ends: the epoch ended early
    except BaseException as exc:  # everything goes to the training process, which raises it
        try:
            ready.send(("error", _picklable(exc), traceback.format_exc()))
        except Exception:
            code = 1
    finally:
        os._exit(code)  # a forked child: no exit handlers or finalization of the training process's state


def _layout(batch: Batch) -> Tuple[Layout, Dict[str, Any], List[torch.Tensor], int]:
    layout: Layout = []
    plain: Dict[str, Any] = {}
    tensors: List[torch.Tensor] = []
    offset = 0
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            plain[key] = value
            continue
        value = value.contiguous()
        layout.append((key, str(value.numpy().dtype), tuple(value.shape), offset))
        tensors.append(value)
        offset += -(-value.numel() * value.element_size() // _ALIGN) * _ALIGN
    return layout, plain, tensors, offset


def _picklable(exc: BaseException) -> Optional[BaseException]:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return None


def _worker_error(exc: Optional[BaseException], text: str) -> BaseException:
    """The worker's exception with its own type (the engine reports data errors by type), noting the worker's
    traceback; a RuntimeError with that traceback where the exception could not be sent."""
    if exc is None:
        return RuntimeError(f"The data worker process failed:\n{text}")
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised in the data worker process)\n{text}")
    return exc


def _exit_reason(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (": out of memory?" if name == "SIGKILL" else "")
    return f"exit code {code}"
