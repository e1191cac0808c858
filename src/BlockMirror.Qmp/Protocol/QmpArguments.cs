using System.Text.Json;
using BlockMirror.Block.Drivers.Registry;
using BlockMirror.Block.Qapi;

namespace BlockMirror.Qmp.Protocol;

/// <summary>
/// A command's <c>arguments</c> object: the block layer's <see cref="OptionReader"/> (QEMU's QAPI input
/// visitor rules), reporting its errors as <see cref="QmpException"/>s with the same text, so that option
/// errors of commands and of driver options (read by the driver registry) answer alike.
/// </summary>
public sealed class QmpArguments(JsonElement arguments, string prefix = "", bool keyval = false, QapiObject? declared = null)
    : OptionReader(arguments, prefix, keyval, declared)
{
    /// <summary>No arguments at all (a command sent without <c>arguments</c>).</summary>
    public static QmpArguments Empty { get; } = new(JsonDocument.Parse("{}").RootElement.Clone());

    protected override Exception Error(string message) => QmpException.Generic(message);

    protected override OptionReader Create(JsonElement value, string prefix, QapiObject? declared) => new QmpArguments(value, prefix, IsKeyVal, declared);

    public override QmpArguments? OptionalObject(string name) => (QmpArguments?)base.OptionalObject(name);

    public override QmpArguments Nested(JsonElement value, string prefix, QapiObject? declared = null) => (QmpArguments)base.Nested(value, prefix, declared);

    public override QmpArguments Check(QapiObject type) => (QmpArguments)base.Check(type);
}
