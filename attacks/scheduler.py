"""Full batches for the adaptive engine: many one-image attack *jobs*, one target evaluation.

An adaptive goal run is a queue of jobs -- one image, one entry of the engine's plan (route x
restart x stage x target rank) -- and each job is a pure function of its image and its entry
(its seed and random start are its own).  :class:`SlotScheduler` runs up to ``slots`` jobs at
once, each in its own thread calling an ordinary registry attack on a one-image batch; their
target evaluations are gathered and made as **one batched evaluation** per round (for UnMask:
one pass of M and one session run of K over every job's image -- two when only some of the
jobs' routes use K's gradient at that step).  A job ends when its image
reaches the goal (the attack is stopped there) or its steps are done; its slot then takes the
next job, so the batch stays full until the queue runs dry.  At the tail, when no new image is
waiting, free slots take *speculative* jobs: the next plan entries of images whose current
entry still runs (entries are independent, so their results are the ones the sequential order
would get; a result after the image's winning entry is dropped, and counted nowhere).

What a job computes does not depend on which jobs share its batch, on the number of slots or
on the order in which jobs ran (up to float rounding in kernels that are not row-independent):
the records of a goal run are those of the sequential plan, image by image.

Threads: each job thread runs the attack's Python/TensorFlow-eager code on its own image; the
target (and K's TF1 session) is only ever called from the scheduling thread.  Rounds are
formed only when every running job has posted its next request or ended, so which jobs share a
round is deterministic.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


class Stop(BaseException):
    """Raised inside a job thread to end its attack (goal reached, or the job was cancelled).
    A BaseException, so an attack's own ``except Exception`` cannot swallow it."""


class Job:
    """One image attacked along one plan entry.

    Attributes:
        image: row of the image in the scheduler's images; entry: index into the plan.
        request: what the job thread posted and waits on (None: nothing pending).
        reply: the scheduler's answer to ``request`` (an object, or :data:`STOP`).
        done: the job's thread has ended; error: what it raised (not :class:`Stop`).
        cancelled: its result is no longer wanted (the image won at an earlier entry).
        result: what the job function returned.
    """

    def __init__(self, image: int, entry: int):
        self.image, self.entry = int(image), int(entry)
        self.request = None
        self.reply = None
        self.ready = threading.Event()
        self.done = False
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.result = None
        self.thread: Optional[threading.Thread] = None
        #: what the job function keeps of its progress (set by the job itself)
        self.state = None


#: The reply that ends a job's attack (raised as :class:`Stop` in its thread).
STOP = object()


class JobContext:
    """What a job's thread calls to have its request evaluated in the next round."""

    def __init__(self, scheduler: "SlotScheduler", job: Job):
        self.scheduler, self.job = scheduler, job

    def ask(self, request):
        """Post ``request`` and wait for the round's reply; raises :class:`Stop` when the
        scheduler ends the job."""
        reply = self.scheduler.post(self.job, request)
        if reply is STOP:
            raise Stop()
        return reply


class SlotScheduler:
    """Runs the jobs of a plan over images with at most ``slots`` at once.

    Args:
        n_images: images in the queue (in order).
        n_entries: plan entries per image (an image's entries are taken in order; an image
            is resolved when an entry wins or every entry ran).
        slots: jobs run at once (the evaluation batch), >= 1.
        job_fn: ``(ctx: JobContext, image, entry) -> result``, run in the job's thread; it
            calls ``ctx.ask(request)`` for each evaluation.
        evaluate: ``(jobs: list of Job with requests) -> list of replies`` (one batched
            evaluation; a reply of :data:`STOP` ends that job).
        resolve: ``(image, entry, result) -> bool``: consume an entry's result in plan
            order; True when the image is resolved (won) at this entry.
        start: per image, the first entry still to run (a resumed run), default all 0.
        resolved: per image, nothing left to run (a resumed run's images that reached the
            goal or ran every entry), default: those whose ``start`` is past the last entry.
        speculate: let idle slots run later entries of images still being attacked.
        on_round: called after each round (e.g. to save progress).
    """

    def __init__(self, n_images: int, n_entries: int, slots: int,
                 job_fn: Callable, evaluate: Callable, resolve: Callable,
                 start: Optional[Sequence[int]] = None, resolved: Optional[Sequence[bool]] = None,
                 speculate: bool = True, on_round: Optional[Callable[[], None]] = None):
        if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) or slots < 1:
            raise ValueError("slots must be an integer >= 1, got %r" % (slots,))
        self.n_entries, self.slots = int(n_entries), int(slots)
        self.job_fn, self.evaluate, self.resolve = job_fn, evaluate, resolve
        self.speculate, self.on_round = bool(speculate), on_round
        #: per image: the next entry whose result is consumed (the sequential prefix)
        self.prefix = np.zeros(n_images, np.int64) if start is None else np.array(
            start, np.int64)
        #: per image: resolved (won, or every entry consumed)
        self.resolved = (self.prefix >= self.n_entries) if resolved is None else (
            np.array(resolved, bool) | (self.prefix >= self.n_entries))
        #: per image: the next entry not yet started
        self.launched = self.prefix.copy()
        self.held: Dict[tuple, object] = {}      # results past an image's prefix
        self.running: List[Job] = []
        self.cond = threading.Condition()
        self.next_image = 0
        self.rounds = 0

    # ------------------------------------------------------------ job threads
    def post(self, job: Job, request):
        """Called by a job thread: post its request, wait for the reply."""
        with self.cond:
            job.request = request
            self.cond.notify_all()
        job.ready.wait()
        job.ready.clear()
        reply, job.reply = job.reply, None
        return reply

    def _thread_main(self, job: Job) -> None:
        try:
            job.result = self.job_fn(JobContext(self, job), job.image, job.entry)
        except Stop:
            job.result = None
        except BaseException as e:  # noqa: B902 -- handed to the scheduling thread, re-raised
            job.error = e
        finally:
            with self.cond:
                job.done = True
                self.cond.notify_all()

    def _launch(self, image: int, entry: int) -> None:
        job = Job(image, entry)
        job.thread = threading.Thread(target=self._thread_main, args=(job,), daemon=True,
                                      name="attack-job-%d-%d" % (image, entry))
        self.launched[image] = entry + 1
        self.running.append(job)
        job.thread.start()

    # ------------------------------------------------------------ scheduling
    def _fill(self) -> None:
        """Give free slots their next jobs: first the next entry of images with no running
        job (in image order, new images last), then speculative later entries."""
        busy = {j.image for j in self.running}
        free = self.slots - len(self.running)
        if free <= 0:
            return
        # images in progress whose next entry is not started and none of theirs runs
        for i in np.flatnonzero(~self.resolved):
            if free == 0:
                return
            if i in busy or i >= self.next_image or self.launched[i] >= self.n_entries:
                continue
            self._launch(int(i), int(self.launched[i]))
            busy.add(int(i))
            free -= 1
        while free > 0 and self.next_image < len(self.prefix):
            i = self.next_image
            self.next_image += 1
            if self.resolved[i]:
                continue
            self._launch(i, int(self.launched[i]))
            free -= 1
        while free > 0 and self.speculate:
            extra = [i for i in np.flatnonzero(~self.resolved)
                     if i < self.next_image and self.launched[i] < self.n_entries]
            if not extra:
                return
            # round robin over the images, fewest jobs ahead of their prefix first
            extra.sort(key=lambda i: (self.launched[i] - self.prefix[i], i))
            for i in extra:
                if free == 0:
                    return
                self._launch(int(i), int(self.launched[i]))
                free -= 1

    def _wait_posted(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: all(j.done or j.request is not None
                                           for j in self.running))

    def _reply(self, job: Job, reply) -> None:
        job.request, job.reply = None, reply
        job.ready.set()

    def _consume(self, image: int) -> None:
        """Consume held results of ``image`` in plan order while its prefix has them."""
        while not self.resolved[image] and (image, int(self.prefix[image])) in self.held:
            entry = int(self.prefix[image])
            result = self.held.pop((image, entry))
            won = bool(self.resolve(image, entry, result))
            self.prefix[image] = entry + 1
            if won or self.prefix[image] >= self.n_entries:
                self.resolved[image] = True
        if self.resolved[image]:
            for key in [k for k in self.held if k[0] == image]:
                del self.held[key]
            for job in self.running:
                if job.image == image:
                    job.cancelled = True

    def _finish(self, job: Job) -> None:
        job.thread.join()
        self.running.remove(job)
        if job.error is not None:
            raise job.error
        if job.cancelled or self.resolved[job.image]:
            return
        self.held[(job.image, job.entry)] = job.result
        self._consume(job.image)

    def run(self) -> None:
        """Run every job (returns when every image is resolved)."""
        try:
            while True:
                self._fill()
                if not self.running:
                    return
                self._wait_posted()
                ended = [j for j in self.running if j.done]
                for job in ended:
                    self._finish(job)
                stopped = [j for j in self.running if j.cancelled and j.request is not None]
                for job in stopped:
                    self._reply(job, STOP)
                if ended or stopped:
                    continue            # refill the freed slots before the round
                asking = list(self.running)
                replies = self.evaluate(asking)
                if len(replies) != len(asking):
                    raise RuntimeError("the evaluation answered %d of the round's %d jobs"
                                       % (len(replies), len(asking)))
                for job, reply in zip(asking, replies):
                    self._reply(job, reply)
                self.rounds += 1
                if self.on_round is not None:
                    self.on_round()
        finally:
            self._stop_all()

    def _stop_all(self) -> None:
        """End every job thread still running (after an error or an interrupt)."""
        while self.running:
            self._wait_posted()
            for job in list(self.running):
                if job.done:
                    job.thread.join()
                    self.running.remove(job)
                elif job.request is not None:
                    self._reply(job, STOP)
