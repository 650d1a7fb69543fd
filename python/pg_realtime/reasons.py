"""Error reasons and system messages, worded exactly as the reference server words them.

Join errors are ``"<Code>: <message>"``; the official clients show them to the user as they are.
"""

from __future__ import annotations

TOPIC_NAME_REQUIRED = "TopicNameRequired: You must provide a topic name"
TOPIC_NAME_TOO_LONG = "TopicNameTooLong: The topic name must be at most 255 bytes"
TOO_MANY_CHANNELS = "ChannelRateLimitReached: Too many channels"
TOO_MANY_JOINS = "ClientJoinRateLimitReached: Too many joins per second"
UNMATCHED_TOPIC = "unmatched topic"
PRESENCE_PAYLOAD_NOT_MAP = "Presence track payload must be a map"
CLIENT_PRESENCE_RATE_LIMIT = "Client presence rate limit exceeded"
TOO_MANY_PRESENCE_MESSAGES = "Too many presence messages per second"
TRACK_SIZE_EXCEEDED = "Track message size exceeded"
REPLAY_INVALID = "UnableToReplayMessages: Replay params are not valid"
REPLAY_FAILED = "UnableToReplayMessages: Realtime was unable to replay messages"
REPLAY_PUBLIC = "UnableToReplayMessages: Replay is not allowed for public channels"
DATABASE_UNAVAILABLE = "UnableToConnectToProject: Realtime was unable to connect to the project database"
TOO_MANY_MESSAGES = "Too many messages per second"
INVALID_JWT = "The token provided is not a valid JWT"
PAYLOAD_SIZE_EXCEEDED = "payload_size_exceeded"


def unauthorized_read(subtopic: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {subtopic}"


#: Postgres Changes are announced, not served: a ``system`` message of status "ok" in upstream's
#: shape, because "error" makes realtime-py rejoin the channel for ever.
POSTGRES_CHANGES_NOT_SERVED = (
    "Postgres Changes are not served by this server: broadcast the rows with a "
    "realtime.broadcast_changes() trigger and listen for broadcasts instead"
)
REPLICATION_READY = "Replication connection established"
REPLICATION_NOT_READY = "Replication connection was not established in time"


def no_read_permission(subtopic: str) -> str:
    """An access_token refresh or a periodic check that finds the user may no longer read."""
    return f"You do not have permissions to read from this Channel topic: {subtopic}"


def revoked_read(subtopic: str) -> str:
    return f"You no longer have permission to read from this Channel topic: {subtopic}"


def rls_error(subtopic: str, detail: str) -> str:
    return f"RlsPolicyError: Error checking the RLS policies of topic {subtopic}: {detail}"


def token_expired(seconds_ago: int) -> str:
    return f"Token has expired {seconds_ago} seconds ago"
