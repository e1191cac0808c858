using System.Text.Json;
using BlockMirror.TestKit;

namespace BlockMirror.Cli.Tests;

/// <summary><c>blockmirror mirror --json</c>: QMP-shaped events and progress objects, one per stdout line.</summary>
public sealed class MirrorJsonTests : IDisposable
{
    readonly TempDirectory _dir = new("blockmirror-cli-test-");

    public void Dispose() => _dir.Dispose();

    [SkippableFact]
    public async Task Json_prints_the_qmp_event_sequence_of_a_completed_mirror()
    {
        var source = _dir.File("source.raw");
        var target = _dir.File("target.raw");
        await QemuImages.CreateAsync(source, "8M", "write -P 0xab 0 1M", "write -P 0xcd 6M 64k", "write -z 7M 64k");
        var started = DateTimeOffset.UtcNow;

        var result = await BlockMirrorCli.RunAsync("mirror", "--json", source, target);

        Assert.True(result.ExitCode == 0 && result.StandardError.Length == 0, result.ToString());
        await QemuImages.AssertIdenticalAsync(source, target);

        var events = new List<JsonElement>();
        foreach (var line in result.OutputLines)
        {
            using var document = JsonDocument.Parse(line);
            events.Add(document.RootElement.Clone());
        }

        foreach (var e in events)
        {
            Assert.Equal(JsonValueKind.String, e.GetProperty("event").ValueKind);
            Assert.Equal(JsonValueKind.Object, e.GetProperty("data").ValueKind);
            var timestamp = e.GetProperty("timestamp");
            var seconds = timestamp.GetProperty("seconds").GetInt64();
            var microseconds = timestamp.GetProperty("microseconds").GetInt64();
            Assert.InRange(microseconds, 0, 999_999);
            Assert.InRange(seconds, started.ToUnixTimeSeconds() - 1, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 1);
        }

        // QEMU's sequence for a mirror that is completed once READY (auto-finalize, auto-dismiss).
        var sequence = events.Select(Describe).Where(d => d != "PROGRESS").ToArray();
        Assert.Equal(
            [
                "JOB_STATUS_CHANGE created", "JOB_STATUS_CHANGE running", "JOB_STATUS_CHANGE ready", "BLOCK_JOB_READY",
                "JOB_STATUS_CHANGE waiting", "JOB_STATUS_CHANGE pending", "BLOCK_JOB_COMPLETED",
                "JOB_STATUS_CHANGE concluded", "JOB_STATUS_CHANGE null",
            ],
            sequence);

        foreach (var change in events.Where(e => Describe(e).StartsWith("JOB_STATUS_CHANGE", StringComparison.Ordinal)))
        {
            Assert.Equal("mirror", change.GetProperty("data").GetProperty("id").GetString());
        }

        var progress = events.Where(e => Describe(e) == "PROGRESS").Select(e => e.GetProperty("data")).ToArray();
        Assert.NotEmpty(progress);
        foreach (var data in progress)
        {
            var offset = data.GetProperty("offset").GetInt64();
            var len = data.GetProperty("len").GetInt64();
            Assert.InRange(offset, 0, len);
            Assert.Equal("mirror", data.GetProperty("device").GetString());
            Assert.False(string.IsNullOrEmpty(data.GetProperty("status").GetString()));

            // The measured progress, as query-block-jobs shows it: what remains is what is dirty or in flight.
            Assert.True(data.GetProperty("remaining").GetInt64() >= data.GetProperty("dirty").GetInt64());
            Assert.True(data.GetProperty("copy-rate").GetInt64() >= 0);
            Assert.True(data.GetProperty("dirty-rate").GetInt64() >= 0);
        }

        var completed = events.Single(e => Describe(e) == "BLOCK_JOB_COMPLETED").GetProperty("data");
        Assert.False(completed.TryGetProperty("error", out var error), $"BLOCK_JOB_COMPLETED carries an error: {error}");
        Assert.Equal("mirror", completed.GetProperty("type").GetString());
        Assert.Equal("mirror", completed.GetProperty("device").GetString());
        Assert.Equal(0, completed.GetProperty("speed").GetInt64());
        var copied = completed.GetProperty("offset").GetInt64();
        Assert.Equal(completed.GetProperty("len").GetInt64(), copied);

        // At least the 1 MiB + 64 KiB of data; at most all of it plus the written zeroes.
        Assert.InRange(copied, (1 << 20) + (64 << 10), (1 << 20) + (128 << 10));

        var ready = events.Single(e => Describe(e) == "BLOCK_JOB_READY").GetProperty("data");
        Assert.Equal(ready.GetProperty("len").GetInt64(), ready.GetProperty("offset").GetInt64());
    }

    /// <summary>An event's name, with the status for JOB_STATUS_CHANGE.</summary>
    static string Describe(JsonElement e)
    {
        var name = e.GetProperty("event").GetString()!;
        return name == "JOB_STATUS_CHANGE" ? $"{name} {e.GetProperty("data").GetProperty("status").GetString()}" : name;
    }
}
