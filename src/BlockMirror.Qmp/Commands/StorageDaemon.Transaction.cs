using BlockMirror.Qmp.Protocol;

namespace BlockMirror.Qmp.Commands;

/// <summary>
/// transaction (QEMU 7.2's qmp_transaction): a list of actions applied all or none. Every action is prepared in
/// order; when all are, each is committed, and when one fails, every one prepared before it is undone (in reverse
/// order) and the failure is the answer. The actions are abort and the six block-dirty-bitmap-* ones; QEMU's others
/// (snapshots, backups) are refused by name before anything is prepared.
/// </summary>
public sealed partial class StorageDaemon
{
    void AddTransactionCommand()
    {
        Commands.Add("transaction", BitmapSchema.TransactionArguments, async (reader, cancellationToken) =>
        {
            var items = reader.OptionalList("actions")!;
            var properties = reader.OptionalObject("properties");
            var grouped = properties?.OptionalString("completion-mode") == "grouped";
            properties?.CheckNoneUnexpected();

            // Every action is read (and an unsupported one refused) before any is prepared, so a refusal changes nothing.
            var actions = new List<TransactionAction>(items.Count);
            foreach (var (item, label) in items)
            {
                var entry = reader.Nested(item, label + ".", BitmapSchema.TransactionAction);
                var kind = entry.RequireString("type");
                if (BitmapSchema.TransactionAction.Variant(kind) is null)
                {
                    throw QmpException.Generic($"Transaction action '{kind}' is not supported (only abort and the block-dirty-bitmap-* actions are); nothing was done");
                }

                var data = entry.OptionalObject("data")!;
                actions.Add(kind == "abort" ? ReadAbortAction(data) : ReadBitmapAction(kind, data, grouped));
                entry.CheckNoneUnexpected();
            }

            reader.CheckNoneUnexpected();
            await RunActionsAsync(actions, cancellationToken).ConfigureAwait(false);
            return Empty;
        });
    }

    static TransactionAction ReadAbortAction(QmpArguments data)
    {
        data.CheckNoneUnexpected();
        return new AbortAction { Kind = "abort" };
    }

    /// <summary>
    /// Prepares every action in order, then commits them; when a prepare fails, every action prepared is undone in
    /// reverse order and the failure is thrown. A commit that writes an image (removing a persistent bitmap) is the
    /// one kind that can fail: those run first, so that such a failure still undoes every action not committed.
    /// </summary>
    static async ValueTask RunActionsAsync(IReadOnlyList<TransactionAction> actions, CancellationToken cancellationToken)
    {
        var prepared = new List<TransactionAction>(actions.Count);
        try
        {
            foreach (var action in actions)
            {
                await action.PrepareAsync(cancellationToken).ConfigureAwait(false);
                prepared.Add(action);
            }
        }
        catch
        {
            await AbortAsync(prepared).ConfigureAwait(false);
            throw;
        }

        List<TransactionAction> order = [.. prepared.Where(a => a.CommitWritesImage), .. prepared.Where(a => !a.CommitWritesImage)];
        for (var i = 0; i < order.Count; i++)
        {
            try
            {
                await order[i].CommitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                await AbortAsync(order[i..]).ConfigureAwait(false);
                throw;
            }
        }
    }

    static async ValueTask AbortAsync(List<TransactionAction> actions)
    {
        for (var i = actions.Count - 1; i >= 0; i--)
        {
            await actions[i].AbortAsync().ConfigureAwait(false);
        }
    }
}
