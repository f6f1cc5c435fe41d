"""The memory agent: per step, LOG then PLAN over one shared conversation.

Two roles share the conversation: the *memory* role runs LOG and the consultation part of
PLAN; the *action* role commits the world action. By default both are the same model; with
a trained memory specialist they are two handles (adapter and base) of one model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from agent_core.commands import CONSULT_OPS, OPS, WRITE_OPS, Command, format_command, parse_reply, split_at_look_ups
from agent_core.conversation import Conversation
from agent_core.grammar import Grammar, act_grammar, log_grammar, plan_grammar
from agent_core.hooks import HookOutputCut
from agent_core.memory import MemoryDir
from agent_core.models.base import Roles
from agent_core.records import MemoryOp, ModelCall, Routine
from environments.base import normalise_action
from agent_core.scaffold import RoutineConfig, Scaffold

log = logging.getLogger(__name__)


@dataclass
class StepDecision:
    """What the agent decided in one step and everything it did to get there."""

    action_text: str
    action_source: str  # "model" | "default"
    calls: list[ModelCall] = field(default_factory=list)
    memory_ops: list[MemoryOp] = field(default_factory=list)
    invalid_ops: int = 0
    #: grammars first used in this step, digest -> text
    grammars: dict[str, str] = field(default_factory=dict)
    #: scaffold hooks that raised in this step (the step went on without them)
    hook_errors: list[str] = field(default_factory=list)
    #: commands written after a look-up group in one reply: not run (the group ends a reply)
    ops_not_run: int = 0


#: placeholder values of the help lines, by argument name (and by op where it reads better);
#: the wording is part of every prompt: small models copy it, so changing it changes episodes
_EXAMPLE_ARGS = {"file": "name.md", "text": "text", "old": "old passage", "new": "new passage", "key": "key",
                 "value": "value", "query": "keyword", "rewrite.text": "whole new text"}
#: one example per memory op of the op table: its required arguments (CREATE shows its text too)
COMMAND_HELP = [format_command(name, **{a: _EXAMPLE_ARGS.get(f"{name}.{a}", _EXAMPLE_ARGS[a])
                                        for a in (spec.args if name == "create" else spec.args[:spec.required])})
                for name, spec in OPS.items() if spec.memory]


class MemoryAgent:
    """Runs the LOG and PLAN routines of one episode. Holds no game state."""

    def __init__(self, scaffold: Scaffold, roles: Roles, memory: MemoryDir, env_actions: list[str],
                 instructions: str, game: str, episode_id: str = "", seed: int = 0,
                 hooks_confinement: str = "os"):
        self.scaffold, self.cfg, self.roles, self.memory = scaffold, scaffold.config, roles, memory
        self.sampling = roles.sampling_for(self.cfg.model)
        self.actions = env_actions
        self.default_action = self._default_action(env_actions)
        allowed = set(self.cfg.log.allowed_ops) | set(self.cfg.plan.allowed_ops)
        help_lines = [h for h in COMMAND_HELP if _op_of(h) in allowed]
        self._vars = dict(
            game=game,
            instructions=instructions,
            actions=env_actions,
            memory_files=[f.model_dump() for f in self.cfg.memory_files],
            command_help=help_lines,
            log_ops=[o.upper() for o in self.cfg.log.allowed_ops],
            plan_ops=[o.upper() for o in self.cfg.plan.allowed_ops],
            done=format_command("done"),
            action_example=format_command("action", name=env_actions[0]),
        )
        self.conv = Conversation(scaffold.render("system", **self._vars), self.cfg.history_window,
                                 call_prefix=f"{episode_id}:",
                                 demonstrations=[(d.user, d.assistant) for d in self.cfg.demonstrations],
                                 max_reply_chars=self.cfg.max_reply_chars, seed=seed,
                                 history_stride=self.cfg.history_stride)
        self._kinds = {f.name: f.kind for f in self.cfg.memory_files}
        #: this episode's hook runner (a fresh worker: no hook state crosses episodes)
        self.hooks = scaffold.hook_runner(hooks_confinement)
        self._validate_write = self.hooks.function("validate_write") if self.hooks else None
        self._postprocess = self.hooks.function("postprocess_observation") if self.hooks else None
        self._grammars: dict[tuple[str, int, tuple[str, ...], bool, bool], Grammar] = {}
        self._grammars_recorded: set[str] = set()

    def _grammar(self, routine: str, ops_left: int, decision: StepDecision,
                 last_turn: bool = False) -> Grammar | None:
        """The grammar of the next call of `routine` ("log", "plan" or "act") with `ops_left`
        operations left, over the memory's current files (None when replies are not
        constrained). On the routine's `last_turn` no look-up group may end the reply."""
        if not self.roles.constrain:
            return None
        files = tuple(self.memory.names())
        consult_first = routine == "log" and self.cfg.log.consult_before_write and not self._consulted
        key = (routine, ops_left, files, consult_first, last_turn)
        if key not in self._grammars:
            if routine == "log":
                g = log_grammar(self.cfg.log.allowed_ops, ops_left, list(files), consult_first, last_turn)
            elif routine == "plan":
                g = plan_grammar(self.cfg.plan.allowed_ops, ops_left,
                                 self.actions if self.roles.shared else None, list(files), last_turn)
            else:
                g = act_grammar(self.actions)
            self._grammars[key] = g
        g = self._grammars[key]
        if g.digest not in self._grammars_recorded:
            self._grammars_recorded.add(g.digest)
            decision.grammars[g.digest] = g.text
        return g

    def _default_action(self, env_actions: list[str]) -> str:
        wanted = self.cfg.default_action
        known = {normalise_action(a): a for a in env_actions}
        if wanted and normalise_action(wanted) in known:
            return known[normalise_action(wanted)]
        if wanted:  # e.g. a game's scaffold smoke-tested on the tiny game
            log.warning("default action %r is not in this game's vocabulary; using %r", wanted, env_actions[0])
        return env_actions[0]

    # ------------------------------------------------------------------
    def close(self) -> None:
        """Stop this episode's hook worker, if one runs."""
        if self.hooks is not None:
            self.hooks.close()

    def step(self, step: int, observation: str, last_action: str | None, reward: float) -> StepDecision:
        decision = StepDecision(action_text="", action_source="model")
        if self._postprocess:
            try:
                observation = str(self._postprocess(observation))
            except HookOutputCut as exc:  # the cut output, and the error on record
                observation = exc.value
                decision.hook_errors.append(f"postprocess_observation: {exc}"[:500])
            except Exception as exc:  # a hook bug must not end the episode: the raw observation
                decision.hook_errors.append(f"postprocess_observation: {type(exc).__name__}: {exc}"[:500])
        self._consulted = False  # searched or read memory during this step
        self.conv.begin_step(step)
        self.conv.add_user(self.scaffold.render(
            "log", step=step, observation=observation, last_action=last_action, reward=reward,
            memory_listing=self.memory.list().text, **self._vars))
        if self.cfg.agent == "context-window":  # no memory: the observation, then the action
            action = self._commit_action(decision)
            decision.action_text = action if action is not None else self.default_action
            decision.action_source = "model" if action is not None else "default"
            return decision
        self._routine("log", self.cfg.log, decision)
        self.conv.add_user(self.scaffold.render("plan", **self._vars))
        action = self._routine("plan", self.cfg.plan, decision)
        if action is None:
            action = self._commit_action(decision)
        if action is None:
            decision.action_text, decision.action_source = self.default_action, "default"
        else:
            decision.action_text = action
        return decision

    # ------------------------------------------------------------------
    def _routine(self, routine: Routine, cfg: RoutineConfig, decision: StepDecision) -> str | None:
        """Memory-role turns until DONE, the action (PLAN, shared model) or the turn limit.

        Each turn is one reply: writes, then an ending. A group of look-ups ends the reply:
        its results go into the conversation and the routine goes on with a new turn, so the
        model sees what it looked up before it writes or acts. Commands after the group are
        not run (the grammar never allows them; a free-text reply is told so). Returns an
        action when the shared model committed one during PLAN."""
        ops_left = cfg.max_ops
        for turn in range(cfg.max_turns):
            last_turn = turn == cfg.max_turns - 1
            grammar = self._grammar(routine, ops_left, decision, last_turn)
            call = self.conv.call(self.roles.memory, self.sampling, routine, "memory", grammar)
            decision.calls.append(call)
            parsed = parse_reply(call.reply, truncated=call.finish_reason != "stop")  # length, abort, filter: incomplete
            feedback = list(parsed.errors)
            decision.invalid_ops += parsed.error_count
            finished, action, over_cap, not_run = False, None, 0, 0
            run, cut = split_at_look_ups(parsed.commands)  # a look-up group ends the reply
            for cmd in run:
                if cmd.op == "done":
                    finished = True
                    break
                if cmd.op == "action":
                    if routine == "plan" and self.roles.shared:
                        action, finished = cmd.args.get("name", ""), True
                        break
                    decision.invalid_ops += 1
                    feedback.append(f"ACTION is not allowed in {routine.upper()}; end it with DONE.")
                    continue
                if ops_left <= 0:
                    over_cap += 1
                    continue
                ops_left -= 1
                op = self._apply(routine, cfg, cmd, call.call_id)
                decision.memory_ops.append(op)
                decision.invalid_ops += not op.ok
                feedback.append(f"{cmd.op.upper()}: {op.result}")
            else:  # the reply was not ended by DONE or the action before the cut
                not_run = len(cut)
            if over_cap:  # invalid, with one line of feedback however many there were
                decision.invalid_ops += over_cap
                feedback.append(f"{over_cap} operation(s) not run: at most {cfg.max_ops} per {routine.upper()}.")
            if not_run:
                decision.ops_not_run += not_run
                feedback.append(f"{not_run} command(s) after the look-up(s) not run: a look-up ends the "
                                "reply, and its results are above.")
            if finished:
                if feedback:
                    self.conv.add_user("\n".join(feedback))
                return action
            if turn + 1 < cfg.max_turns:  # the routine goes on: say what the next turn may do
                feedback.append(self._continue_line(routine, ops_left, last=turn + 2 == cfg.max_turns))
            if feedback:
                self.conv.add_user("\n".join(feedback))
        return None

    def _continue_line(self, routine: Routine, ops_left: int, last: bool) -> str:
        """The cue of a routine's next turn: what it may still do (the grammar's options)."""
        done = self._vars["done"]
        end = (f"commit your action ({self._vars['action_example']}) or {done}"
               if routine == "plan" and self.roles.shared else done)
        if routine == "plan":
            return f"{routine.upper()} continues: {end}." if last or ops_left <= 0 else \
                f"{routine.upper()} continues: look up more, or {end}."
        if self.cfg.log.consult_before_write and not self._consulted:  # no write can run yet
            return f"{routine.upper()} continues: {end}." if last or ops_left <= 0 else \
                f"{routine.upper()} continues: look up first (writes are refused until then), or {end}."
        if last or ops_left <= 0:
            return f"{routine.upper()} continues: write what is new, then {end}."
        return f"{routine.upper()} continues: write what is new, look up more, or {end}."

    def _apply(self, routine: Routine, cfg: RoutineConfig, cmd: Command, call_id: str) -> MemoryOp:
        hook_error = None

        def record(ok: bool, result: str, delta: int = 0, duplicate: bool = False, empty: bool = False) -> MemoryOp:
            return MemoryOp(call_id=call_id, routine=routine, op=cmd.op, args=cmd.args, ok=ok, result=result,
                            delta_chars=delta, duplicate=duplicate, empty=empty, hook_error=hook_error)

        if cmd.op not in cfg.allowed_ops:
            allowed = ", ".join(o.upper() for o in cfg.allowed_ops)
            return record(False, f"{cmd.op.upper()} is not allowed in {routine.upper()}; allowed: {allowed}")
        duplicate = False
        if cmd.op == "append" and self._kinds.get(cmd.args.get("file", "")) == "keyed-table":
            return record(False, f"{cmd.args['file']} is a keyed table: use UPSERT (one line per key), not APPEND.")
        if cmd.op in WRITE_OPS and cfg.consult_before_write and not self._consulted:
            return record(False, f"{cmd.op.upper()} refused: SEARCH or READ memory before writing "
                                 "(this scaffold requires a look-up first, to avoid duplicates; one that "
                                 "finds nothing counts: it shows the text is not there yet).")
        if cmd.op in WRITE_OPS:
            if self._validate_write:
                try:
                    refusal = self._validate_write(cmd.op, dict(cmd.args), self.memory.files())
                except HookOutputCut as exc:  # a refusal all the same, cut, and the error on record
                    refusal = exc.value
                    hook_error = f"validate_write: {exc}"[:500]
                except Exception as exc:  # a hook bug is not a refusal: the write goes on, recorded
                    refusal = None
                    hook_error = f"validate_write: {type(exc).__name__}: {exc}"[:500]
                if refusal:
                    return record(False, str(refusal))
            duplicate = _is_duplicate(self.memory, cmd)
        res = self.memory.apply(cmd.op, cmd.args)
        # a failed look-up saw nothing; one that returned nothing (no hits, an empty file) is a
        # consult all the same, and the refusal says so: it showed the text is not there yet
        self._consulted |= res.ok and cmd.op in CONSULT_OPS
        return record(res.ok, res.text, res.delta_chars, duplicate and res.ok, res.empty)

    def _commit_action(self, decision: StepDecision) -> str | None:
        """The action role's turn: one world action, with a correction on a bad reply."""
        self.conv.add_user(self.scaffold.render("act", **self._vars))
        for attempt in range(self.cfg.action_attempts):
            grammar = self._grammar("act", 1, decision)
            call = self.conv.call(self.roles.action, self.sampling, "plan", "action", grammar)
            decision.calls.append(call)
            parsed = parse_reply(call.reply, truncated=call.finish_reason != "stop")  # length, abort, filter: incomplete
            actions = [c for c in parsed.commands if c.op == "action"]
            if actions:
                return actions[0].args.get("name", "")
            decision.invalid_ops += 1
            if attempt + 1 < self.cfg.action_attempts:
                self.conv.add_user(
                    f"No action found. Reply with exactly {self._vars['action_example']}.")
        return None


def _op_of(help_line: str) -> str:
    return help_line.split("|>", 1)[0].removeprefix("<|").lower()


def _is_duplicate(memory: MemoryDir, cmd: Command) -> bool:
    """A write whose text already stands in the target file (wasteful logging)."""
    text = (cmd.args.get("text") or cmd.args.get("value") or "").strip()
    name = cmd.args.get("file", "")
    if not text or cmd.op in ("delete", "rewrite", "replace"):
        return False
    existing = memory.text(name)
    if cmd.op == "upsert":
        key = cmd.args.get("key", "").strip()
        return existing is not None and f"{key}: {text}" in existing
    return existing is not None and text in existing
