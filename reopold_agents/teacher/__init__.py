"""The teacher: everything that turns a batch of student episodes into the teacher's per-token scores.

* ``scores.TeacherScores``: what any teacher returns (tensors), gathered with ``put``, written into the
  batch once with ``apply_to``.
* ``scorer.Teacher``: the student's own ids scored in-process, through vLLM or a served model.
* ``cross/``: a teacher with another tokenizer (render, pieces, align, scorer).
* ``http``: a served teacher (an OpenAI-compatible vLLM server's prompt log-probs).
* ``router.TeacherRouter``: each env entry's rows scored by its teacher; the one object a run's
  teacher role holds.
* ``build``: the one rule for which path a teacher takes (``teacher_path``) and ``build_teacher``.
"""

from reopold_agents.teacher.build import TeacherPath, TeacherPathError, build_teacher, teacher_path
from reopold_agents.teacher.cross.scorer import CrossTokenizerTeacher
from reopold_agents.teacher.router import TeacherRouter, routed_teachers, teacher_label, teacher_routes
from reopold_agents.teacher.scorer import Teacher
from reopold_agents.teacher.scores import TeacherScores
from reopold_agents.teacher.tokenizers import TokenizerMismatchError, check_same_tokenizer

__all__ = ["CrossTokenizerTeacher", "Teacher", "TeacherPath", "TeacherPathError", "TeacherRouter", "TeacherScores",
           "TokenizerMismatchError", "build_teacher", "check_same_tokenizer", "routed_teachers", "teacher_label",
           "teacher_path", "teacher_routes"]
