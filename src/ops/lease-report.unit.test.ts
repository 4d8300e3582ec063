import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { partitionRanges, projectorLeasesLine } from './lease-report.ts';

void describe('partitionRanges', () => {
  void it('joins runs of partitions into ranges, in order', () => {
    assert.equal(partitionRanges([5, 0, 1, 2, 3, 7]), '0-3, 5, 7');
    assert.equal(partitionRanges([4]), '4');
    assert.equal(partitionRanges([]), '');
  });
});

void describe('projectorLeasesLine', () => {
  const live = (partition: number, owner: string) => ({
    site: 'here',
    partition,
    owner,
    live: true,
    expiredSeconds: null,
  });

  void it('names each holder with its partitions when every partition is held', () => {
    assert.equal(
      projectorLeasesLine([live(0, 'a:1'), live(1, 'a:1'), live(2, 'b:1'), live(3, 'a:1')], 4),
      'projector leases: 0-1, 3 by a:1; 2 by b:1',
    );
  });

  void it('names the partitions nobody holds, whose leases lapsed (most recent per holder) or were never taken', () => {
    const line = projectorLeasesLine(
      [
        live(0, 'a:1'),
        { site: 'here', partition: 1, owner: 'gone:1', live: false, expiredSeconds: 700 },
        { site: 'here', partition: 2, owner: 'gone:1', live: false, expiredSeconds: 650 },
        // Given back on a clean stop: no owner, no expiry to tell.
        { site: 'here', partition: 3, owner: null, live: false, expiredSeconds: null },
      ],
      5,
    );
    assert.equal(
      line,
      "no projector holds partitions 1-4 (leases expired: gone:1's 650 s ago): nothing applies their events until a projector runs (outpost serve --only projector, or outpost serve) and reaches the main database; held: 0 by a:1",
    );
  });

  void it('says one partition in the singular, and nothing held when none is', () => {
    assert.equal(
      projectorLeasesLine([], 1),
      'no projector holds partition 0: nothing applies their events until a projector runs (outpost serve --only projector, or outpost serve) and reaches the main database',
    );
  });
});
