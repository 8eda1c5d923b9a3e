-- Orthanc auto-routing to the DSM node.
--
-- When a study becomes stable (no new instance for StableAge seconds), send its CT series to
-- the modality "dsm" (the node). The node's results (SEG, SR) come back into the same study and
-- make it unstable again; the second OnStableStudy must not re-send the CT. So the number of CT
-- instances already routed is kept in the study's metadata "DsmRoutedCtCount": a study is
-- routed again only when new CT instances arrived (the node then makes a new revision of it).

local TARGET = 'dsm'

function OnStableStudy(studyId, tags, metadata)
  local ctSeries = {}
  local ctCount = 0
  for _, series in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    if series['MainDicomTags']['Modality'] == 'CT' then
      table.insert(ctSeries, series['ID'])
      ctCount = ctCount + #series['Instances']
    end
  end
  if ctCount == 0 then
    return
  end
  local routed = tonumber(metadata['DsmRoutedCtCount'] or '0')
  if routed == ctCount then
    return
  end
  print('dsm-autoroute: sending ' .. ctCount .. ' CT instances of study ' .. studyId .. ' to ' .. TARGET)
  -- Lua's SendToModality takes single instances; the REST store job takes whole series and runs
  -- asynchronously in Orthanc's job engine (visible under /jobs, retried from there).
  local job = { Resources = ctSeries, Synchronous = false }
  RestApiPost('/modalities/' .. TARGET .. '/store', DumpJson(job, true))
  RestApiPut('/studies/' .. studyId .. '/metadata/DsmRoutedCtCount', tostring(ctCount))
end
