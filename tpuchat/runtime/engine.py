"""The engine: a loaded bmodel that turns prompt ids into a stream of tokens
and measures first-token latency, tokens/s and the device/host split."""

import os
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from ..errors import ImageError, ImageNotHeld, PromptTooLong, TpuchatError
from .binding import Model, load_runtime
from .decode_loop import LookupPlan, decode_loop
from .lookup import MeasuredCost, PassCost
from .protocol import GenerationStats, ModelDesc, samples
from .bmodel_file import check_bmodel_file
from .image_inputs import ImageInputs
from .libfind import RuntimeLocation, find_runtime


class Engine:
    """A bmodel opened on one or more devices (in this process)."""

    def __init__(self, bmodel: str, devids: Sequence[int] = (0,), lib_dir: Optional[str] = None,
                 share_refused: str = ""):
        from .weights import split_models

        self.family = None
        self._image_digest: Optional[str] = None  # the image whose states the device holds
        self._lookup_costs: dict = {}  # bmodel path -> (weight-pass PassCost, MeasuredCost) for lookup decoding
        paths = split_models(bmodel)
        if len(paths) > 1:
            self._open_family(paths, devids, lib_dir, share_refused)
            return
        file_info = check_bmodel_file(bmodel)
        self.runtime: RuntimeLocation = find_runtime(lib_dir)
        load_runtime(str(self.runtime.path))
        self.model = Model(str(file_info.path), list(devids))
        self.desc: ModelDesc = self.model.describe(file_info)
        self.stats = GenerationStats()
        self._init_head_path(str(file_info.path))

    # -- greedy head: device or host, by measured cost ----------------------
    def _init_head_path(self, bmodel: str) -> None:
        """Costs measured by an earlier run of this bmodel on this runtime
        skip the measuring; TPUCHAT_HEAD=device|host forces a path."""
        from .runtime_checks import head_costs

        self._head_file = bmodel
        # a choice exists only for a logits lm_head beside a greedy_head
        self._head_choice = self.desc.lm_head == "logits" and "greedy_head" in self.desc.heads
        self._head_known = head_costs(self.runtime.path, bmodel)
        path = os.environ.get("TPUCHAT_HEAD", "auto").strip().lower() or "auto"
        if path not in ("auto", "device", "host"):
            raise TpuchatError(f"TPUCHAT_HEAD={path!r}: use auto, device or host")
        if self._head_choice:
            self.model.set_head_path(path, *self._head_known)

    def _remember_head_costs(self) -> None:
        if self.family is not None or not self._head_choice:
            return
        device_us, host_us, _ = self.model.head_costs()
        if device_us > 0 and host_us > 0 and (device_us, host_us) != self._head_known:
            from .runtime_checks import remember_head_costs

            remember_head_costs(self.runtime.path, self._head_file, device_us, host_us)
            self._head_known = (device_us, host_us)

    # -- several bmodels of the same weights (--model a,b) -----------------
    def _open_family(self, paths, devids, lib_dir, refused: str = "") -> None:
        """Check the bmodels hold the same weights, then load each once to
        describe it; generate() picks the shortest that fits.  refused: an
        earlier process of this open found the shared load wrong (its note)."""
        from .binding import Family
        from .weights import check_same_weights

        infos = [check_bmodel_file(p) for p in paths]
        check_same_weights([str(i.path) for i in infos])
        self.runtime = find_runtime(lib_dir)
        load_runtime(str(self.runtime.path))
        # One weight area for all members, where the runtime places weights
        # soundly: the shim checks each shared load and falls back to whole
        # loads when not, and a refusal is remembered for this runtime build.
        # TPUCHAT_SHARE_WEIGHTS=0 never tries, =1 checks again.
        from ..errors import SharedWeightsRefused
        from .runtime_checks import remember_share_refused, share_refused

        env = os.environ.get("TPUCHAT_SHARE_WEIGHTS", "")
        known = refused or (None if env in ("0", "1") else share_refused(self.runtime.path))
        share = env != "0" and not known
        clock = time.perf_counter
        t0 = clock()
        self.family = Family([str(i.path) for i in infos], list(devids), 0, share)
        first_s = clock() - t0
        if share and self.family.share_note:
            # The runtime keeps state from the refused load that corrupts later loads in this
            # process (on TPU-MLIR 1.30.2's simulator: wrong tokens, or "wrong gdma type"),
            # so the whole loads happen in a fresh process.
            remember_share_refused(self.runtime.path, self.family.share_note)
            note = self.family.share_note
            self.family.close()
            self.family = None
            raise SharedWeightsRefused(note)
        self.share_note = self.family.share_note or known or ""
        self.share_checked = share or bool(refused)
        descs, loads = [], []
        for i, fi in enumerate(infos):
            loads.append(first_s if i == 0 else None)
            if i:
                self.family.switch(i)
                loads[i] = self.family.last_switch_s
            descs.append(self.family.model.describe(fi))
        self.family_open_s = clock() - t0
        from .binding import bmodel_memory

        self.member_memory = []
        for fi in infos:
            try:
                self.member_memory.append(vars(bmodel_memory(str(fi.path))))
            except TpuchatError:  # old runtime: sizes unknown
                self.member_memory.append({})
        # Shortest KV length first: the order generate() tries them in.
        self.members = sorted(range(len(infos)), key=lambda i: (descs[i].kv_len, descs[i].seq_len))
        self.member_descs = descs
        self.member_load_s = loads
        self.model = self.family.model
        self.desc = descs[self.members[-1]]  # the limits are the longest member's
        self.stats = GenerationStats()

    def family_info(self) -> Optional[dict]:
        """The members and the weight sharing, for `info` and the client (None for one bmodel)."""
        if self.family is None:
            return None
        return {
            "members": [dict(self.member_descs[i].to_dict(), load_s=self.member_load_s[i], **self.member_memory[i])
                        for i in self.members],
            "active": self.member_descs[self.family.active].path,
            "shared_weights": self.family.shared,
            "share_note": self.share_note,
            "share_checked": self.share_checked,  # False: skipped (TPUCHAT_SHARE_WEIGHTS=0 or an earlier run's verdict)
            "weight_bytes": self.family.weight_bytes,
            "open_s": self.family_open_s,
        }

    def _select(self, n_prompt: int, room: int) -> float:
        """Load the shortest member whose KV length holds the prompt and `room`
        answer tokens (else the longest); returns the seconds spent switching."""
        if self.family is None:
            return 0.0
        pick = self.members[-1]
        for i in self.members:
            if self.member_descs[i].kv_len >= n_prompt + room:
                pick = i
                break
        if pick == self.family.active:
            return 0.0
        self.model = self.family.switch(pick)
        self._image_digest = None  # the new member holds no image
        spent = self.family.last_switch_s
        pinned = getattr(self, "_pinned_ids", None)
        if pinned and len(pinned) < self.member_descs[pick].kv_len:
            t0 = time.perf_counter()  # the new member starts empty: pin the shared prefix again
            self.model.pin_prefix(pinned)
            spent += time.perf_counter() - t0
        return spent

    def _active_name(self) -> str:
        if self.family is None:
            return ""
        return os.path.basename(self.member_descs[self.family.active].path)

    def check_prompt(self, n: int) -> None:
        if n < 1:
            raise PromptTooLong("the prompt is empty")
        if n > self.desc.kv_len:
            raise PromptTooLong(
                f"the prompt has {n} tokens but this bmodel holds at most {self.desc.kv_len} "
                "(its KV length); shorten it or use a bmodel compiled with a longer --seq_length"
            )

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int = 256,
        stop_ids: Iterable[int] = (),
        should_stop: Optional[Callable[[], bool]] = None,
        sampling: Optional[dict] = None,
        reuse: Union[bool, str] = True,
        image: Optional[ImageInputs] = None,
        image_pos: Optional[int] = None,
        lookup: Union[bool, str] = True,
    ) -> Iterator[int]:
        """Yield generated token ids (stop tokens are not yielded).

        sampling: None for greedy, else keyword arguments of
        Model.set_sampling (sample, temperature, top_p, top_k,
        repetition_penalty, penalty_window, seed).  With reuse, the KV rows
        of the longest prefix shared with what is cached are kept and only
        the rest is computed, when that is cheaper than a fresh prefill by
        measured costs; reuse="always" keeps them whenever it can (the same
        tokens either way; tests use it to pin the path); False starts fresh.
        self.stats is complete once the iterator is exhausted.

        image: the conversation's image (vision bmodels), image_pos: the
        index of its image token in prompt_ids; rows from there on attend to
        the image.  The vit runs only for an image whose digest differs from
        the one held on the device.  None: a text-only prompt.

        lookup: prompt-lookup decoding, for greedy answers on bmodels with
        block_kv nets: drafts of the next tokens are taken from earlier in
        the prompt and answer, and one chunk pass checks several at once.
        The tokens are those of plain decoding; a gate fed with measured
        pass times switches it off while it does not pay.  "always" keeps
        it on whatever it costs (tests pin the path); False decodes plainly.
        Sampled answers always decode plainly (no speculative sampling)."""
        ids = list(prompt_ids)
        self.check_prompt(len(ids))
        switch_s = self._select(len(ids), max(0, max_new_tokens))
        self.set_sampling(sampling)
        stops = set(stop_ids)
        st = self.stats = GenerationStats(prompt_tokens=len(ids), bmodel=self._active_name(), switch_s=switch_s)
        self._use_image(image, image_pos, len(ids), st)
        if max_new_tokens < 1:
            st.stop_reason = "max_tokens"
            return
        model = self.model
        clock = time.perf_counter
        if not reuse:
            model.rewind(0)
        t0 = clock()
        token = model.prefill_reuse(ids, always_append=reuse == "always")
        st.ftl_s = clock() - t0
        st.prefill_device_s = model.last_timing()[1] / 1e6
        st.reused_tokens = model.last_reused()
        plan = self._lookup_plan(lookup, sampling)
        yield from decode_loop(model, token, ids, max_new_tokens, stops, should_stop, self.model_kv_len(), st, plan)
        self._remember_head_costs()

    # -- prompt-lookup decoding ------------------------------------------------
    def _lookup_plan(self, lookup: Union[bool, str], sampling: Optional[dict]) -> Optional[LookupPlan]:
        """How to run lookup for this answer, or None for plain decoding: it
        needs block_kv nets (chunks of at least 2) and greedy selection."""
        sampled = bool(sampling) and samples(sampling.get("sample"), float(sampling.get("temperature", 1.0)))
        capacity = self.model.chunk_capacity
        if not lookup or sampled or capacity < 2:
            return None
        path = self._active_path()
        if path not in self._lookup_costs:
            prior = PassCost(head_share=_head_share(path), heads_per_row=True)  # one head launch per chunk row
            self._lookup_costs[path] = (prior, MeasuredCost(prior))
        prior, measured = self._lookup_costs[path]
        return LookupPlan(prior, measured, max_draft=min(4, capacity - 1), pinned=lookup == "always")

    def _active_path(self) -> str:
        if self.family is None:
            return self.desc.path
        return self.member_descs[self.family.active].path

    def pin_prefix(self, prefix_ids: Sequence[int]) -> dict:
        """Keep the KV rows of a shared prefix on the device (see
        Model.pin_prefix); returns what it cost: tokens, seconds, rows that
        were already cached."""
        ids = list(prefix_ids)
        if ids and len(ids) >= self.desc.kv_len:
            raise PromptTooLong(
                f"the shared prefix has {len(ids)} tokens but this bmodel holds at most {self.desc.kv_len} "
                "(its KV length), with room left for questions and answers; shorten it"
            )
        t0 = time.perf_counter()
        self.model.pin_prefix(ids)
        self._pinned_ids = ids
        return {"tokens": len(ids), "seconds": time.perf_counter() - t0,
                "reused_tokens": self.model.last_reused() if ids else 0}

    def model_kv_len(self) -> int:
        """KV length of the loaded bmodel (the active member's)."""
        if self.family is None:
            return self.desc.kv_len
        return self.member_descs[self.family.active].kv_len

    def _use_image(self, image: Optional[ImageInputs], image_pos: Optional[int], n: int,
                   st: GenerationStats) -> None:
        if image is None:
            if image_pos is not None:
                raise ImageError("an image position was given without an image")
            self.model.set_image_pos(-1)
            return
        d = self.desc
        if not d.has_vision:
            raise ImageError("this bmodel has no vision encoder (no vit net with cross-attention layers); "
                             "it cannot take images")
        if image_pos is None or not 0 <= image_pos < n:
            raise ImageError(f"the image token position {image_pos} is not inside the {n}-token prompt")
        if image.tiles != d.vision_tiles or image.size != d.image_size:
            raise ImageError(f"the image was preprocessed to {image.tiles} tiles of {image.size} px, but this "
                             f"bmodel takes {d.vision_tiles} tiles of {d.image_size} px")
        if image.digest != self._image_digest:
            if not image.pixel_values:
                raise ImageNotHeld("the engine does not hold this image and no pixel values were sent")
            self._image_digest = None
            st.vit_s = self.model.set_image(image.pixel_values, image.tiles, image.size,
                                            image.aspect_ratio_id, image.aspect_ratio_mask)
            self._image_digest = image.digest
        else:
            st.image_reused = True
        self.model.set_image_pos(image_pos)

    @property
    def image_digest(self) -> Optional[str]:
        """Digest of the image whose states the device holds (None: none)."""
        return self._image_digest

    def image_states(self) -> list:
        """The held image's vit output as floats ([tiles, patches, hidden] flattened)."""
        return self.model.image_states()

    def set_sampling(self, sampling: Optional[dict]) -> None:
        if not sampling or not sampling.get("sample"):
            self.model.set_sampling(sample=False)
            return
        args = dict(sampling)
        if args.get("seed") is None:
            args["seed"] = int.from_bytes(os.urandom(8), "little")
        self.model.set_sampling(**args)

    def forced_picks(self, prompt_ids: Sequence[int], continuation: Sequence[int]) -> list:
        """Teacher forcing: feed `continuation` after the prompt whatever the
        model picks, and return the model's greedy pick at every step.  Used
        to compare quantised builds with a reference without one flipped
        choice derailing the rest."""
        ids = list(prompt_ids)
        self.check_prompt(len(ids))
        self._select(len(ids), len(continuation))
        self.model.rewind(0)
        self.model.set_image_pos(-1)
        picks = [self.model.prefill_reuse(ids)]
        for tok in list(continuation)[:-1]:
            if self.model.position >= self.model_kv_len():
                break
            picks.append(self.model.decode(tok))
        return picks

    def close(self) -> None:
        if self.family is not None:
            self.family.close()
            return
        self.model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _head_share(path: str) -> float:
    """The head's share of the weights one decode step reads (lm_head over
    lm_head + the decode layers), from the file's weight blocks; 0.08 (about
    Qwen-7B's) when they cannot be read.  Only the reported passes use it."""
    from .weights import read_weights

    try:
        blocks = read_weights(path).blocks
    except TpuchatError:
        return 0.08
    head = sum(b.size for n, b in blocks.items() if n in ("lm_head", "greedy_head"))
    layers = sum(b.size for n, b in blocks.items() if n.startswith("block_cache_"))
    return head / (head + layers) if head and layers else 0.08


__all__ = ["Engine", "GenerationStats", "TpuchatError"]
