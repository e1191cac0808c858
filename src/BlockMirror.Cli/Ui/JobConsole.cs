using System.Text.Json;
using System.Text.Json.Nodes;
using BlockMirror.Block.Graph;
using BlockMirror.Block.Io;
using BlockMirror.Jobs;
using BlockMirror.Jobs.Events;
using BlockMirror.Jobs.Mirror;
using BlockMirror.Qmp.Commands;
using BlockMirror.Qmp.Events;

namespace BlockMirror.Cli.Ui;

/// <summary>
/// Runs a block job to its end for a one-shot command: completes it as soon as it is READY (there is no
/// one else to decide), shows progress as a line or as QMP-style JSON events, and turns a failed job into
/// an error. Created before the job starts, so that its first events are seen too.
/// </summary>
sealed class JobConsole : IDisposable
{
    readonly List<JobEvent> _events = [];

    // Set when the job reports READY, so the wait between two looks ends at once: the job is completed then, not
    // at the next progress tick (up to a second later with --json, which is all of a small re-sync's run).
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly IDisposable _subscription;
    readonly bool _json;
    readonly bool _progress;
    readonly BlockGraph _graph;
    int _readErrors, _writeErrors;

    /// <param name="graph">The job's graph, to name a failed request's file rather than its node.</param>
    /// <param name="json">Print every event and a PROGRESS object each second, one JSON object per line.</param>
    /// <param name="progress">Show the progress line (ignored with <paramref name="json"/>).</param>
    public JobConsole(JobManager manager, BlockGraph graph, bool json, bool progress = true)
    {
        _graph = graph;
        _json = json;
        _progress = progress && !json;
        _subscription = manager.Events.Subscribe(e =>
        {
            lock (_events)
            {
                _events.Add(e);
            }

            if (e is BlockJobReadyEvent)
            {
                _ready.TrySetResult();
            }
        });
    }

    /// <summary>
    /// Waits for the job (a mirror or an active commit) to end, showing its measured progress. Throws
    /// <see cref="IOException"/> with <paramref name="what"/> when the job failed.
    /// </summary>
    public async Task<BlockJobInfo> RunAsync(MirrorJob job, string what, CancellationToken cancellationToken)
    {
        using var onCancel = cancellationToken.Register(() => _ = job.CancelAsync(force: true));
        var line = ProgressLine.ForConsole();
        var completed = false;
        BlockJobInfo final;
        try
        {
            while (!job.Finished.IsCompleted)
            {
                foreach (var e in TakeEvents())
                {
                    if (e is BlockJobReadyEvent && !completed)
                    {
                        completed = true;
                        job.Complete();
                    }
                }

                var info = job.GetInfo();
                var progress = job.GetProgress();
                if (_json)
                {
                    WriteProgressJson(info, job.DirtyBytes, progress);
                }
                else if (_progress)
                {
                    line.Update(info.Offset, info.Len, progress, info.Status.ToWireName(), ErrorSummary());
                }

                var tick = Task.Delay(_json ? 1000 : 200, CancellationToken.None);
                await (completed ? Task.WhenAny(job.Finished, tick) : Task.WhenAny(job.Finished, tick, _ready.Task));
            }

            TakeEvents();
            final = job.GetInfo();
            if (_progress)
            {
                var state = cancellationToken.IsCancellationRequested ? "cancelled" : job.Error is null ? "completed" : "failed";
                line.Update(final.Offset, Math.Max(final.Len, final.Offset), job.GetProgress(), state, ErrorSummary(), force: true);
            }
        }
        finally
        {
            // Whatever ends the wait, the error line that follows starts on a line of its own.
            line.Finish();
        }

        // Cancelled by us (the job then reports "Operation canceled" as its error): an interrupt, not a failure.
        cancellationToken.ThrowIfCancellationRequested();
        if (job.Error is not null)
        {
            throw new IOException($"the {what} failed: {Describe(job.Error, job.Failure)}");
        }

        return final;
    }

    /// <summary>
    /// The job's error as QMP reports it (for an I/O error the errno's text, e.g. "Operation not permitted")
    /// with the context its exception holds (which node, which request, why), each said once.
    /// </summary>
    string Describe(string error, Exception? failure)
    {
        if (failure is null)
        {
            return error;
        }

        var message = failure.Message;
        if (failure is BlockIOException io && _graph.FindNode(io.NodeName)?.Driver.FileName is { } file)
        {
            // The user named files, not nodes: the file the request went to, not '#block001'.
            message = message.Replace($"node '{io.NodeName}'", $"'{file}'", StringComparison.Ordinal);
        }

        return message.Contains(error, StringComparison.Ordinal) ? message : $"{error}: {message}";
    }

    /// <summary>
    /// The errors an <c>ignore</c> policy let pass, for the progress line: without it a mirror that cannot
    /// write its target shows "running" for ever with no sign of why it makes no progress.
    /// </summary>
    string ErrorSummary()
    {
        var parts = new List<string>(2);
        if (_readErrors > 0)
        {
            parts.Add($"{_readErrors} read error{(_readErrors == 1 ? "" : "s")}");
        }

        if (_writeErrors > 0)
        {
            parts.Add($"{_writeErrors} write error{(_writeErrors == 1 ? "" : "s")}");
        }

        return parts.Count == 0 ? "" : $"  ({string.Join(", ", parts)} ignored)";
    }

    /// <summary>The events since the last call, printed first in JSON mode.</summary>
    List<JobEvent> TakeEvents()
    {
        List<JobEvent> batch;
        lock (_events)
        {
            batch = [.. _events];
            _events.Clear();
        }

        foreach (var e in batch)
        {
            if (e is BlockJobErrorEvent { Action: BlockErrorAction.Ignore, IsRead: true })
            {
                _readErrors++;
            }
            else if (e is BlockJobErrorEvent { Action: BlockErrorAction.Ignore })
            {
                _writeErrors++;
            }

            if (_json)
            {
                Console.WriteLine(QmpEventWriter.ToJson(e));
            }
        }

        return batch;
    }

    /// <summary>One PROGRESS line: QEMU's offset and len, what is dirty, and the measured progress as query-block-jobs shows it.</summary>
    static void WriteProgressJson(BlockJobInfo info, long dirty, MirrorProgress progress)
    {
        var data = new JsonObject
        {
            ["device"] = info.Device,
            ["status"] = info.Status.ToWireName(),
            ["offset"] = info.Offset,
            ["len"] = info.Len,
            ["dirty"] = dirty,
        };
        MirrorProgressJson.AddTo(data, progress);
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("event", "PROGRESS");
            writer.WritePropertyName("data");
            data.WriteTo(writer);
            QmpEventWriter.WriteTimestamp(writer, DateTimeOffset.UtcNow);
            writer.WriteEndObject();
        }

        Console.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.ToArray()));
    }

    public void Dispose() => _subscription.Dispose();
}
