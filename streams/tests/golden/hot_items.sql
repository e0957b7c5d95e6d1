-- Nested aggregates over a hopping window (Nexmark q5, "hot items"): per window, the
-- auctions with the most bids. The window relation's rows are kept per pane and the whole
-- query runs once per window, when the watermark passes its end.
== sql
CREATE TABLE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP, WATERMARK FOR date_time AS date_time)
  WITH (topic = 'bids');
INSERT INTO hot_items
SELECT AuctionBids.auction, AuctionBids.starttime, AuctionBids.num
FROM (
  SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
  FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '4' SECOND)
  GROUP BY auction, window_start, window_end
) AS AuctionBids
JOIN (
  SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime
  FROM (
    SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
    FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '4' SECOND)
    GROUP BY auction, window_start, window_end
  ) AS CountBids
  GROUP BY CountBids.starttime, CountBids.endtime
) AS MaxBids
ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
   AND AuctionBids.num >= MaxBids.maxn
ORDER BY AuctionBids.auction;
== input
0 {"auction":1,"price":10,"date_time":500}
0 {"auction":1,"price":11,"date_time":1500}
0 {"auction":2,"price":12,"date_time":2500}
0 {"auction":2,"price":13,"date_time":3000}
0 {"auction":2,"price":14,"date_time":3500}
== input
0 {"auction":3,"price":15,"date_time":8000}
== expected
result hot_items key=- {"auction":1,"starttime":"1969-12-31T23:59:58","num":2}
result hot_items key=- {"auction":2,"starttime":"1970-01-01T00:00:00","num":3}
result hot_items key=- {"auction":2,"starttime":"1970-01-01T00:00:02","num":3}
