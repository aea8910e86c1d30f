"""The executor LLM: one chat interface, two backends, a reply cache and cost accounting."""

from scoreflow.executor.client import ChatClient, ChatReply, ExecutorError, Usage, UsageMeter

__all__ = ["ChatClient", "ChatReply", "ExecutorError", "Usage", "UsageMeter"]
