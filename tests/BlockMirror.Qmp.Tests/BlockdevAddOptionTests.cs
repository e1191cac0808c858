using System.Text.Json.Nodes;
using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Tests;

/// <summary>
/// blockdev-add reads node options through the driver registry: its errors keep QMP's class and QEMU's
/// text, and a refused command leaves no node behind.
/// </summary>
public sealed class BlockdevAddOptionTests
{
    [Theory]
    [InlineData("""{"driver": "nbd", "node-name": "n"}""", "Parameter 'server' is missing")]
    [InlineData("""{"driver": "memory", "node-name": "n", "size": 4096}""", "Parameter 'driver' does not accept value 'memory'")]
    [InlineData("""{"driver": "null-co", "node-name": "n", "foo": 1}""", "Parameter 'foo' is unexpected")]
    [InlineData("""{"driver": "null-co", "node-name": "n", "size": "big"}""", "Invalid parameter type for 'size', expected: integer")]
    [InlineData("""{"driver": "raw", "node-name": "n", "file": {"driver": "null-co", "cache": {"direct": 1}}}""", "Invalid parameter type for 'file.cache.direct', expected: boolean")]
    [InlineData("""{"driver": "raw", "node-name": "n", "file": "nope"}""", "Cannot find device='nope' nor node-name='nope'")]
    public async Task Bad_options_are_a_generic_error_in_qemus_words(string arguments, string message)
    {
        await using var daemon = new DaemonHarness();

        var refused = await Assert.ThrowsAsync<QmpException>(() => daemon.ExecuteAsync("blockdev-add", JsonNode.Parse(arguments)!.AsObject()));

        Assert.Equal(QmpException.GenericError, refused.ErrorClass);
        Assert.Equal(message, refused.Message);
        Assert.Empty(daemon.Daemon.Graph.Nodes);
    }
}
