using System.Text.Json;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;

namespace BlockMirror.Qmp.Events;

/// <summary>
/// Writes job events as QMP does: <c>{"event": NAME, "data": {...}, "timestamp": {"seconds", "microseconds"}}</c>,
/// with the payload fields of qapi/job.json and qapi/block-core.json.
/// </summary>
public static class QmpEventWriter
{
    public static void Write(Utf8JsonWriter writer, JobEvent e)
    {
        writer.WriteStartObject();
        writer.WriteString("event", e.Name);
        writer.WritePropertyName("data");
        WriteData(writer, e);
        WriteTimestamp(writer, e.Timestamp);
        writer.WriteEndObject();
    }

    /// <summary>The event as one line of JSON.</summary>
    public static string ToJson(JobEvent e)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            Write(writer, e);
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    public static void WriteTimestamp(Utf8JsonWriter writer, DateTimeOffset time)
    {
        var micros = time.ToUnixTimeMilliseconds() * 1000 + time.Ticks % TimeSpan.TicksPerMillisecond / 10;
        writer.WriteStartObject("timestamp");
        writer.WriteNumber("seconds", micros / 1_000_000);
        writer.WriteNumber("microseconds", micros % 1_000_000);
        writer.WriteEndObject();
    }

    static void WriteData(Utf8JsonWriter writer, JobEvent e)
    {
        writer.WriteStartObject();
        switch (e)
        {
            case JobStatusChangeEvent change:
                writer.WriteString("status", change.Status.ToWireName());
                writer.WriteString("id", change.Id);
                break;
            case BlockJobCompletedEvent completed:
                WriteProgress(writer, completed);
                if (completed.Error is { } message)
                {
                    writer.WriteString("error", message);
                }

                break;
            case BlockJobProgressEvent progress:
                WriteProgress(writer, progress);
                break;
            case BlockJobErrorEvent error:
                writer.WriteString("device", error.Device);
                writer.WriteString("operation", error.Operation);
                writer.WriteString("action", error.Action.ToWireName());
                break;
            case BlockJobPendingEvent pending:
                writer.WriteString("type", pending.Type.ToWireName());
                writer.WriteString("id", pending.Id);
                break;
            default:
                throw new ArgumentException($"no QMP shape for event {e.Name}", nameof(e));
        }

        writer.WriteEndObject();
    }

    static void WriteProgress(Utf8JsonWriter writer, BlockJobProgressEvent e)
    {
        writer.WriteString("device", e.Device);
        writer.WriteNumber("len", e.Len);
        writer.WriteNumber("offset", e.Offset);
        writer.WriteNumber("speed", e.Speed);
        writer.WriteString("type", e.Type.ToWireName());
    }
}
