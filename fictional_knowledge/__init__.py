"""What is injected and what is probed: fictional knowledge sets, their loading, validation,
generation and tokenization."""

from fictional_knowledge.model import PROBE_KINDS, KnowledgeSet, Paragraph, Probe

__all__ = ["PROBE_KINDS", "KnowledgeSet", "Paragraph", "Probe"]
