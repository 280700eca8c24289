"""What is injected and what is probed: fictional knowledge sets, their loading, validation,
generation and tokenization."""

from fictional_knowledge.encode import EncodedProbe, encode_paragraph, encode_paragraphs, encode_probe, encode_probes
from fictional_knowledge.generate import generate_knowledge, write_knowledge
from fictional_knowledge.load import load_knowledge
from fictional_knowledge.model import PROBE_KINDS, KnowledgeSet, Paragraph, Probe, ProbeRef
from fictional_knowledge.validate import KnowledgeSummary, validate_knowledge

__all__ = [
    "PROBE_KINDS",
    "EncodedProbe",
    "KnowledgeSet",
    "KnowledgeSummary",
    "Paragraph",
    "Probe",
    "ProbeRef",
    "encode_paragraph",
    "encode_paragraphs",
    "encode_probe",
    "encode_probes",
    "generate_knowledge",
    "load_knowledge",
    "validate_knowledge",
    "write_knowledge",
]
